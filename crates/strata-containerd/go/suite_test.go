// containerd's own snapshotter test suite (snapshots/testsuite, Go source
// from Debian's golang-github-containerd-containerd-dev), run twice in one
// binary: against Strata's server through containerd's proxy client
// (TestStrata), and against containerd's overlayfs snapshotter in-process
// (TestOverlayfs), so a harness can check that every case containerd's
// own snapshotter passes, Strata passes too.
//
// Built in GOPATH mode over Debian's Go sources (no module download):
//   GO111MODULE=off GOPATH=/usr/share/gocode go test -c -o suite.test .
// Run as root: STRATA_SOCKET=... ./suite.test -test.root -test.parallel 1 -test.v
package suite

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/overlay"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func TestStrata(t *testing.T) {
	socket := os.Getenv("STRATA_SOCKET")
	if socket == "" {
		t.Fatal("STRATA_SOCKET names the socket of strata serve")
	}
	testsuite.SnapshotterSuite(t, "strata", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		// The target is only the :authority header (a path is not a
		// valid one); the dialer goes to the socket.
		conn, err := grpc.Dial("localhost",
			grpc.WithInsecure(),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			}),
			grpc.WithBlock(), grpc.WithTimeout(10*time.Second))
		if err != nil {
			return nil, nil, err
		}
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "strata")
		// One server serves every case (run them one at a time): each
		// starts and ends with no snapshot, children removed first.
		clean := func() error {
			for round := 0; round < 1000; round++ {
				var keys []string
				if err := sn.Walk(ctx, func(ctx context.Context, i snapshots.Info) error {
					keys = append(keys, i.Name)
					return nil
				}); err != nil {
					return err
				}
				if len(keys) == 0 {
					return nil
				}
				for _, k := range keys {
					_ = sn.Remove(ctx, k)
				}
			}
			return nil
		}
		if err := clean(); err != nil {
			return nil, nil, err
		}
		return sn, func() error {
			err := clean()
			conn.Close()
			return err
		}, nil
	})
}

func TestOverlayfs(t *testing.T) {
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := overlay.NewSnapshotter(root)
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	})
}
