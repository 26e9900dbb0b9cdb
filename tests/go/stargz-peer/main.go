// stargz-peer serves the stargz snapshotter (containerd's remote
// snapshotter for eStargz images) over containerd's snapshots gRPC API on
// a unix socket, as containerd-stargz-grpc does, for `cargo xtask bench
// lazy` to run beside Strata. Debian ships the snapshotter's Go packages
// but not that program, and its own main needs packages Debian lacks
// (k8s.io/cri-api), so this one wires the same parts itself: the FUSE
// file system (fs), the snapshotter (snapshot) and containerd's
// snapshots service. Registries are reached anonymously; loopback ones
// over plain HTTP. Built in GOPATH mode from Debian's sources
// (strata_testkit::go).
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	clog "github.com/containerd/containerd/log"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	fsconfig "github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/source"
	sgsnapshot "github.com/containerd/stargz-snapshotter/snapshot"
	"google.golang.org/grpc"
)

// hosts resolves a reference to its registry, anonymously; loopback
// registries are spoken to over plain HTTP.
func hosts(client *http.Client) source.RegistryHosts {
	return func(ref reference.Spec) ([]docker.RegistryHost, error) {
		host := ref.Hostname()
		h := docker.RegistryHost{
			Client:       client,
			Host:         host,
			Scheme:       "https",
			Path:         "/v2",
			Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
			Authorizer:   docker.NewDockerAuthorizer(docker.WithAuthClient(client)),
		}
		if local, _ := docker.MatchLocalhost(host); local {
			h.Scheme = "http"
		}
		return []docker.RegistryHost{h}, nil
	}
}

func main() {
	root := flag.String("root", "", "state directory (snapshots, chunk cache)")
	address := flag.String("address", "", "unix socket to serve the snapshots API on")
	flag.Parse()
	if *root == "" || *address == "" {
		log.Fatal("usage: stargz-peer -root DIR -address SOCKET")
	}
	ctx := clog.WithLogger(context.Background(), clog.L)
	// The snapshotter wraps the client's transport, so it must have one.
	client := &http.Client{
		Transport: http.DefaultTransport.(*http.Transport).Clone(),
		Timeout:   60 * time.Second,
	}

	fsys, err := stargzfs.NewFilesystem(filepath.Join(*root, "stargz"), fsconfig.Config{NoPrometheus: true},
		stargzfs.WithGetSources(source.FromDefaultLabels(hosts(client))))
	if err != nil {
		log.Fatalf("stargz file system: %v", err)
	}
	sn, err := sgsnapshot.NewSnapshotter(ctx, filepath.Join(*root, "snapshotter"), fsys, sgsnapshot.AsynchronousRemove)
	if err != nil {
		log.Fatalf("stargz snapshotter: %v", err)
	}
	server := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(sn))
	if err := os.MkdirAll(filepath.Dir(*address), 0o700); err != nil {
		log.Fatal(err)
	}
	os.Remove(*address)
	listener, err := net.Listen("unix", *address)
	if err != nil {
		log.Fatalf("listen on %s: %v", *address, err)
	}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	select {
	case <-stop:
		server.GracefulStop()
	case err := <-served:
		log.Printf("serving stopped: %v", err)
	}
	// Unmounts every layer and removes the snapshots.
	if err := sn.Close(); err != nil {
		log.Printf("close: %v", err)
	}
	os.Remove(*address)
}
