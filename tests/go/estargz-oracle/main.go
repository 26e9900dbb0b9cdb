// estargz-oracle: a reference checker/builder for eStargz layers, built on the
// estargz package of Debian's golang-github-containerd-stargz-snapshotter-dev
// (stargz-snapshotter 0.12.0). Strata's Rust tests use it to check eStargz
// blobs written by Strata and to produce eStargz blobs for Strata to read.
//
// Build (GOPATH mode, no modules, no network). Verified with Go 1.19.8, run from /work/main:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOCACHE=/tmp/estargz-oracle-gocache \
//	    go build -o /tmp/estargz-oracle ./tests/go/estargz-oracle
//
// From any other directory name the file, not the directory (GOPATH mode
// rejects an absolute directory with "cannot import absolute path"):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= GOCACHE=/tmp/estargz-oracle-gocache \
//	    go build -o /tmp/estargz-oracle /work/main/tests/go/estargz-oracle/main.go
//
// Usage:
//
//	estargz-oracle check BLOB [--toc-digest sha256:...]
//	estargz-oracle build TAR OUT [--prioritized PATH]... [--chunk-size N] [--gzip-level N] [--procs N]
//
// JSON goes to stdout. Errors go to stderr; exit code 1 means the input failed
// verification (or estargz.Build rejected it), exit code 2 means a usage or I/O error.
package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

const (
	exitVerify = 1
	exitUsage  = 2
)

// failure carries an exit code through error returns.
type failure struct {
	code int
	err  error
}

func (f *failure) Error() string { return f.err.Error() }

func verifyErr(format string, a ...interface{}) error {
	return &failure{exitVerify, fmt.Errorf(format, a...)}
}

func usageErr(format string, a ...interface{}) error {
	return &failure{exitUsage, fmt.Errorf(format, a...)}
}

func ioErr(err error) error { return &failure{exitUsage, err} }

const usageText = `usage:
  estargz-oracle check BLOB [--toc-digest sha256:...]
  estargz-oracle build TAR OUT [--prioritized PATH]... [--chunk-size N] [--gzip-level N] [--procs N]`

func main() {
	err := run(os.Args[1:])
	if err == nil {
		return
	}
	code := exitVerify
	var f *failure
	if errors.As(err, &f) {
		code = f.code
	}
	fmt.Fprintf(os.Stderr, "estargz-oracle: %v\n", err)
	if code == exitUsage && strings.HasPrefix(err.Error(), "usage") {
		fmt.Fprintln(os.Stderr, usageText)
	}
	os.Exit(code)
}

func run(args []string) error {
	if len(args) < 1 {
		return usageErr("usage: missing subcommand")
	}
	switch args[0] {
	case "check":
		return cmdCheck(args[1:])
	case "build":
		return cmdBuild(args[1:])
	case "-h", "--help", "help":
		fmt.Println(usageText)
		return nil
	default:
		return usageErr("usage: unknown subcommand %q", args[0])
	}
}

// parseArgs splits args into positionals and --flag values. Flags listed in
// multi may repeat; every flag takes exactly one value ("--flag v" or "--flag=v").
func parseArgs(args []string, known map[string]bool, multi map[string]bool) (pos []string, flags map[string][]string, err error) {
	flags = map[string][]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			pos = append(pos, a)
			continue
		}
		name, val, hasVal := strings.Cut(a[2:], "=")
		if !known[name] {
			return nil, nil, usageErr("usage: unknown flag --%s", name)
		}
		if !hasVal {
			if i+1 >= len(args) {
				return nil, nil, usageErr("usage: flag --%s needs a value", name)
			}
			i++
			val = args[i]
		}
		if len(flags[name]) > 0 && !multi[name] {
			return nil, nil, usageErr("usage: flag --%s given twice", name)
		}
		flags[name] = append(flags[name], val)
	}
	return pos, flags, nil
}

func printJSON(v interface{}) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return ioErr(err)
	}
	return nil
}

// ---------------------------------------------------------------- check

type treeEntry struct {
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Mode     string            `json:"mode"`
	UID      int               `json:"uid"`
	GID      int               `json:"gid"`
	Size     int64             `json:"size"`
	Mtime    int64             `json:"mtime"`
	Link     string            `json:"link"`
	SHA256   string            `json:"sha256"`
	DevMajor int               `json:"dev_major"`
	DevMinor int               `json:"dev_minor"`
	Xattrs   map[string]string `json:"xattrs"`
}

type checkResult struct {
	TOCDigest        string      `json:"toc_digest"`
	DiffID           string      `json:"diff_id"`
	UncompressedSize int64       `json:"uncompressed_size"`
	BlobSize         int64       `json:"blob_size"`
	TOCOffset        int64       `json:"toc_offset"`
	TOCEntries       int         `json:"toc_entries"`
	Entries          int         `json:"entries"`
	Files            int         `json:"files"`
	Dirs             int         `json:"dirs"`
	Symlinks         int         `json:"symlinks"`
	Hardlinks        int         `json:"hardlinks"`
	Other            int         `json:"other"`
	Chunks           int         `json:"chunks"`
	Bytes            int64       `json:"bytes"`
	Tree             []treeEntry `json:"tree"`
}

func cmdCheck(args []string) (rerr error) {
	// The estargz parser indexes footer/TOC fields without bounds checks, so
	// malformed input can panic; report that as a verification failure.
	defer func() {
		if p := recover(); p != nil {
			rerr = verifyErr("malformed eStargz (estargz package panicked: %v)", p)
		}
	}()
	pos, flags, err := parseArgs(args, map[string]bool{"toc-digest": true}, nil)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("usage: check takes exactly one BLOB argument")
	}
	var wantTOC digest.Digest
	if v := flags["toc-digest"]; len(v) == 1 {
		d, err := digest.Parse(v[0])
		if err != nil {
			return usageErr("usage: bad --toc-digest %q: %v", v[0], err)
		}
		wantTOC = d
	}

	f, err := os.Open(pos[0])
	if err != nil {
		return ioErr(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ioErr(err)
	}
	if !st.Mode().IsRegular() {
		return usageErr("%s is not a regular file", pos[0])
	}
	sr := io.NewSectionReader(f, 0, st.Size())
	res := &checkResult{BlobSize: st.Size()}

	// 1. Open with the package reader (footer, TOC, tree).
	r, err := estargz.Open(sr)
	if err != nil {
		return verifyErr("not a valid eStargz blob: %v", err)
	}
	res.TOCDigest = r.TOCDigest().String()

	// 2. TOC digest + chunk verifiers.
	verifyWith := r.TOCDigest()
	if wantTOC != "" {
		verifyWith = wantTOC
	}
	ev, err := r.VerifyTOC(verifyWith)
	if err != nil {
		return verifyErr("TOC verification failed: %v", err)
	}

	// 3. Raw TOC, parsed independently of the Reader (needed to compare with
	//    the tar stream entry by entry).
	tocOff, footerSize, err := estargz.OpenFooter(sr)
	if err != nil {
		return verifyErr("footer: %v", err)
	}
	if footerSize != estargz.FooterSize {
		return verifyErr("legacy stargz footer (%d bytes), not eStargz", footerSize)
	}
	res.TOCOffset = tocOff
	if tocOff < 0 || tocOff > st.Size()-footerSize {
		return verifyErr("TOC offset %d out of range", tocOff)
	}
	jtoc, rawDigest, err := new(estargz.GzipDecompressor).ParseTOC(io.NewSectionReader(sr, tocOff, st.Size()-footerSize-tocOff))
	if err != nil {
		return verifyErr("parse TOC: %v", err)
	}
	if rawDigest != r.TOCDigest() {
		return verifyErr("TOC digest mismatch between reader (%s) and raw parse (%s)", r.TOCDigest(), rawDigest)
	}
	res.TOCEntries = len(jtoc.Entries)

	// 4. Whole-blob pass: decompress all gzip members (checks every member's
	//    CRC/size), compute DiffID, and compare the tar stream with the TOC.
	if err := checkStream(sr, jtoc, res); err != nil {
		return err
	}

	// 5. Reader pass: walk the tree, read every regular file through
	//    OpenFile chunk by chunk, verify every chunk digest and file digest.
	if err := checkTree(r, ev, res); err != nil {
		return err
	}
	return printJSON(res)
}

func tocTypeOfTar(h *tar.Header) (string, error) {
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeRegA:
		return "reg", nil
	case tar.TypeLink:
		return "hardlink", nil
	case tar.TypeSymlink:
		return "symlink", nil
	case tar.TypeDir:
		return "dir", nil
	case tar.TypeChar:
		return "char", nil
	case tar.TypeBlock:
		return "block", nil
	case tar.TypeFifo:
		return "fifo", nil
	}
	return "", fmt.Errorf("unsupported tar type %q", h.Typeflag)
}

func cleanName(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// expectedModtime mirrors estargz's formatModtime.
func expectedModtime(t time.Time) string {
	if t.IsZero() || t.Unix() == 0 {
		return ""
	}
	return t.UTC().Round(time.Second).Format(time.RFC3339)
}

// exactModtime is the header's time to the nanosecond, as Strata writes it.
func exactModtime(t time.Time) string {
	if t.IsZero() || (t.Unix() == 0 && t.Nanosecond() == 0) {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func checkStream(sr *io.SectionReader, jtoc *estargz.JTOC, res *checkResult) error {
	zr, err := gzip.NewReader(io.NewSectionReader(sr, 0, sr.Size()))
	if err != nil {
		return verifyErr("blob does not start with a gzip member: %v", err)
	}
	diff := sha256.New()
	cr := &countingReader{r: io.TeeReader(zr, diff)}
	tr := tar.NewReader(cr)

	ents := jtoc.Entries
	idx := 0 // next TOC entry to match
	sawTOC := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return verifyErr("uncompressed stream: tar: %v", err)
		}
		if sawTOC {
			return verifyErr("tar entry %q follows %s; the TOC entry must be the last one", h.Name, estargz.TOCTarName)
		}
		if h.Name == estargz.TOCTarName {
			sawTOC = true
			if idx != len(ents) {
				return verifyErr("TOC has %d entries not present in the tar stream (first: %q)", len(ents)-idx, ents[idx].Name)
			}
			continue
		}
		if idx >= len(ents) {
			return verifyErr("tar entry %q has no TOC entry", h.Name)
		}
		e := ents[idx]
		idx++
		if e.Type == "chunk" {
			return verifyErr("TOC entry %d is a stray \"chunk\" (tar entry %q)", idx-1, h.Name)
		}
		typ, err := tocTypeOfTar(h)
		if err != nil {
			return verifyErr("tar entry %q: %v", h.Name, err)
		}
		if cleanName(e.Name) != cleanName(h.Name) {
			return verifyErr("TOC entry %d is %q but tar entry is %q", idx-1, e.Name, h.Name)
		}
		if e.Type != typ {
			return verifyErr("%q: TOC type %q, tar type %q", h.Name, e.Type, typ)
		}
		if e.Mode != h.Mode {
			return verifyErr("%q: TOC mode %o, tar mode %o", h.Name, e.Mode, h.Mode)
		}
		if e.UID != h.Uid || e.GID != h.Gid {
			return verifyErr("%q: TOC uid/gid %d/%d, tar %d/%d", h.Name, e.UID, e.GID, h.Uid, h.Gid)
		}
		// The reference writer rounds to the second; a TOC may also keep
		// the header's fraction, which readers parse (RFC 3339 allows it).
		// Either way the reader's time must be the header's.
		if want := expectedModtime(h.ModTime); e.ModTime3339 != want && e.ModTime3339 != exactModtime(h.ModTime) {
			return verifyErr("%q: TOC modtime %q, tar modtime %q", h.Name, e.ModTime3339, exactModtime(h.ModTime))
		}
		if e.ModTime3339 != "" && e.ModTime3339 == exactModtime(h.ModTime) {
			// As the reference reader parses it.
			if t, err := time.Parse(time.RFC3339, e.ModTime3339); err != nil || !t.Equal(h.ModTime) {
				return verifyErr("%q: TOC modtime %q parses as %v (%v)", h.Name, e.ModTime3339, t, err)
			}
		}
		if (typ == "symlink" || typ == "hardlink") && e.LinkName != h.Linkname {
			return verifyErr("%q: TOC linkName %q, tar linkname %q", h.Name, e.LinkName, h.Linkname)
		}
		if (typ == "char" || typ == "block") && (int64(e.DevMajor) != h.Devmajor || int64(e.DevMinor) != h.Devminor) {
			return verifyErr("%q: TOC device %d:%d, tar %d:%d", h.Name, e.DevMajor, e.DevMinor, h.Devmajor, h.Devminor)
		}
		tarX := map[string]string{}
		for k, v := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				tarX[k[len("SCHILY.xattr."):]] = v
			}
		}
		if len(tarX) != len(e.Xattrs) {
			return verifyErr("%q: TOC has %d xattrs, tar has %d", h.Name, len(e.Xattrs), len(tarX))
		}
		for k, v := range e.Xattrs {
			if tv, ok := tarX[k]; !ok || tv != string(v) {
				return verifyErr("%q: xattr %q differs between TOC and tar", h.Name, k)
			}
		}
		if typ != "reg" {
			continue
		}
		if e.Size != h.Size {
			return verifyErr("%q: TOC size %d, tar size %d", h.Name, e.Size, h.Size)
		}
		// Chunks of this file: e itself plus following "chunk" entries.
		chunks := []*estargz.TOCEntry{e}
		for idx < len(ents) && ents[idx].Type == "chunk" {
			chunks = append(chunks, ents[idx])
			idx++
		}
		fileHash := sha256.New()
		var n int64
		for ci, c := range chunks {
			if h.Size == 0 {
				break
			}
			if c.ChunkOffset != n {
				return verifyErr("%q: chunk %d has chunkOffset %d, want %d", h.Name, ci, c.ChunkOffset, n)
			}
			size := c.ChunkSize
			if size == 0 {
				size = h.Size - c.ChunkOffset
			}
			if size <= 0 || n+size > h.Size {
				return verifyErr("%q: chunk %d has bad size %d", h.Name, ci, c.ChunkSize)
			}
			if c.ChunkDigest == "" {
				return verifyErr("%q: chunk %d has no chunkDigest", h.Name, ci)
			}
			d, err := digest.Parse(c.ChunkDigest)
			if err != nil {
				return verifyErr("%q: chunk %d: bad chunkDigest: %v", h.Name, ci, err)
			}
			v := d.Verifier()
			if _, err := io.CopyN(io.MultiWriter(v, fileHash), tr, size); err != nil {
				return verifyErr("%q: reading chunk %d from tar stream: %v", h.Name, ci, err)
			}
			if !v.Verified() {
				return verifyErr("%q: chunk %d (chunkOffset %d) does not match chunkDigest in the tar stream", h.Name, ci, c.ChunkOffset)
			}
			n += size
		}
		if n != h.Size {
			return verifyErr("%q: chunks cover %d of %d bytes", h.Name, n, h.Size)
		}
		if e.Digest != "" {
			if got := "sha256:" + hex.EncodeToString(fileHash.Sum(nil)); got != e.Digest {
				return verifyErr("%q: tar stream content digest %s, TOC digest %s", h.Name, got, e.Digest)
			}
		}
	}
	if !sawTOC {
		return verifyErr("tar stream has no %s entry", estargz.TOCTarName)
	}
	// Drain the rest (tar end-of-archive blocks, footer member) so every gzip
	// member is checked and the DiffID covers the whole stream.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return verifyErr("uncompressed stream: %v", err)
	}
	if err := zr.Close(); err != nil {
		return verifyErr("gzip: %v", err)
	}
	res.DiffID = "sha256:" + hex.EncodeToString(diff.Sum(nil))
	res.UncompressedSize = cr.n
	return nil
}

func modeString(m int64) string { return fmt.Sprintf("%04o", m) }

func checkTree(r *estargz.Reader, ev estargz.TOCEntryVerifier, res *checkResult) error {
	root, ok := r.Lookup("")
	if !ok {
		return verifyErr("no root directory in TOC")
	}
	if root.Type != "dir" {
		return verifyErr("root is %q, not a directory", root.Type)
	}
	var tree []treeEntry
	fileDigests := map[*estargz.TOCEntry]string{}

	var walk func(dir string, d *estargz.TOCEntry) error
	walk = func(dir string, d *estargz.TOCEntry) error {
		var names []string
		kids := map[string]*estargz.TOCEntry{}
		d.ForeachChild(func(base string, ent *estargz.TOCEntry) bool {
			names = append(names, base)
			kids[base] = ent
			return true
		})
		sort.Strings(names)
		for _, base := range names {
			ent := kids[base]
			p := base
			if dir != "" {
				p = dir + "/" + base
			}
			te := treeEntry{
				Name:     p,
				Type:     ent.Type,
				Mode:     modeString(ent.Mode),
				UID:      ent.UID,
				GID:      ent.GID,
				Size:     ent.Size,
				Link:     ent.LinkName,
				DevMajor: ent.DevMajor,
				DevMinor: ent.DevMinor,
				Xattrs:   map[string]string{},
			}
			if mt := ent.ModTime(); !mt.IsZero() {
				te.Mtime = mt.Unix()
			}
			for k, v := range ent.Xattrs {
				te.Xattrs[k] = base64.StdEncoding.EncodeToString(v)
			}
			// A hard link's child slot holds the link source's entry, whose
			// Name is the source path.
			isHardlink := cleanName(ent.Name) != p
			if isHardlink {
				te.Type = "hardlink"
				te.Link = cleanName(ent.Name)
				res.Hardlinks++
			} else {
				switch ent.Type {
				case "reg":
					res.Files++
				case "dir":
					res.Dirs++
				case "symlink":
					res.Symlinks++
				case "hardlink":
					return verifyErr("%q: unresolved hardlink entry in tree", p)
				default:
					res.Other++
				}
			}
			res.Entries++
			if ent.Type == "reg" {
				dg, seen := fileDigests[ent]
				if !seen {
					var err error
					dg, err = readFile(r, ev, p, ent, res)
					if err != nil {
						return err
					}
					fileDigests[ent] = dg
				}
				te.SHA256 = dg
			}
			tree = append(tree, te)
			if ent.Type == "dir" && !isHardlink {
				if err := walk(p, ent); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk("", root); err != nil {
		return err
	}
	sort.Slice(tree, func(i, j int) bool { return tree[i].Name < tree[j].Name })
	if tree == nil {
		tree = []treeEntry{}
	}
	res.Tree = tree
	return nil
}

// readFile reads the file at p through Reader.OpenFile, one chunk per ReadAt
// (each ReadAt decompresses from that chunk's Offset), verifies every chunk
// against its chunkDigest and the whole file against the TOC digest.
func readFile(r *estargz.Reader, ev estargz.TOCEntryVerifier, p string, ent *estargz.TOCEntry, res *checkResult) (string, error) {
	fr, err := r.OpenFile(p)
	if err != nil {
		return "", verifyErr("%q: OpenFile: %v", p, err)
	}
	if fr.Size() != ent.Size {
		return "", verifyErr("%q: OpenFile size %d, TOC size %d", p, fr.Size(), ent.Size)
	}
	h := sha256.New()
	var n int64
	for n < ent.Size {
		ce, ok := r.ChunkEntryForOffset(p, n)
		if !ok {
			return "", verifyErr("%q: no chunk for offset %d", p, n)
		}
		if ce.ChunkOffset != n {
			return "", verifyErr("%q: chunk for offset %d starts at %d", p, n, ce.ChunkOffset)
		}
		if ce.ChunkSize <= 0 || n+ce.ChunkSize > ent.Size {
			return "", verifyErr("%q: chunk at %d has bad size %d", p, n, ce.ChunkSize)
		}
		v, err := ev.Verifier(ce)
		if err != nil {
			return "", verifyErr("%q: chunk at %d: %v", p, n, err)
		}
		buf := make([]byte, ce.ChunkSize)
		if _, err := fr.ReadAt(buf, n); err != nil && !(err == io.EOF && n+ce.ChunkSize == ent.Size) {
			return "", verifyErr("%q: reading chunk at %d (blob offset %d): %v", p, n, ce.Offset, err)
		}
		v.Write(buf)
		if !v.Verified() {
			return "", verifyErr("%q: chunk at %d (blob offset %d, size %d) fails chunk digest verification", p, n, ce.Offset, ce.ChunkSize)
		}
		h.Write(buf)
		n += ce.ChunkSize
		res.Chunks++
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if ent.Digest != "" && ent.Digest != got {
		return "", verifyErr("%q: content digest %s, TOC digest %s", p, got, ent.Digest)
	}
	res.Bytes += ent.Size
	return got, nil
}

// ---------------------------------------------------------------- build

type buildResult struct {
	TOCDigest        string `json:"toc_digest"`
	DiffID           string `json:"diff_id"`
	Size             int64  `json:"size"`
	Digest           string `json:"digest"`
	UncompressedSize int64  `json:"uncompressed_size"`
	TOCOffset        int64  `json:"toc_offset"`
}

func cmdBuild(args []string) error {
	pos, flags, err := parseArgs(args,
		map[string]bool{"prioritized": true, "chunk-size": true, "gzip-level": true, "procs": true},
		map[string]bool{"prioritized": true})
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usageErr("usage: build takes TAR and OUT arguments")
	}
	intFlag := func(name string, def int) (int, error) {
		v := flags[name]
		if len(v) == 0 {
			return def, nil
		}
		n, err := strconv.Atoi(v[0])
		if err != nil {
			return 0, usageErr("usage: --%s: %v", name, err)
		}
		return n, nil
	}
	chunkSize, err := intFlag("chunk-size", 0)
	if err != nil {
		return err
	}
	level, err := intFlag("gzip-level", gzip.BestCompression)
	if err != nil {
		return err
	}
	if level < gzip.HuffmanOnly || level > gzip.BestCompression {
		return usageErr("usage: --gzip-level must be in -2..9")
	}
	procs, err := intFlag("procs", 1)
	if err != nil {
		return err
	}
	if procs < 1 {
		return usageErr("usage: --procs must be >= 1")
	}
	// estargz.Build splits the input into runtime.GOMAXPROCS(0) parts, each
	// ending its own gzip member; pinning it makes the output deterministic.
	runtime.GOMAXPROCS(procs)

	in, err := os.Open(pos[0])
	if err != nil {
		return ioErr(err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return ioErr(err)
	}

	opts := []estargz.Option{
		estargz.WithChunkSize(chunkSize),
		estargz.WithCompressionLevel(level),
	}
	if p := flags["prioritized"]; len(p) > 0 {
		opts = append(opts, estargz.WithPrioritizedFiles(p))
	}
	blob, err := estargz.Build(io.NewSectionReader(in, 0, st.Size()), opts...)
	if err != nil {
		return verifyErr("estargz.Build: %v", err)
	}
	defer blob.Close()

	out, err := os.Create(pos[1])
	if err != nil {
		return ioErr(err)
	}
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(out, h), blob)
	if err != nil {
		out.Close()
		return ioErr(fmt.Errorf("writing %s: %w", pos[1], err))
	}
	if err := out.Close(); err != nil {
		return ioErr(err)
	}
	if err := blob.Close(); err != nil {
		return ioErr(err)
	}

	res := buildResult{
		TOCDigest: blob.TOCDigest().String(),
		DiffID:    blob.DiffID().String(),
		Size:      size,
		Digest:    "sha256:" + hex.EncodeToString(h.Sum(nil)),
	}

	// Uncompressed size (for io.containers.estargz.uncompressed-size) and TOC
	// offset, read back from the written blob.
	f, err := os.Open(pos[1])
	if err != nil {
		return ioErr(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return verifyErr("re-reading output: %v", err)
	}
	if res.UncompressedSize, err = io.Copy(io.Discard, zr); err != nil {
		return verifyErr("re-reading output: %v", err)
	}
	footer := make([]byte, estargz.FooterSize)
	if _, err := f.ReadAt(footer, size-estargz.FooterSize); err != nil {
		return ioErr(err)
	}
	if _, res.TOCOffset, _, err = new(estargz.GzipDecompressor).ParseFooter(footer); err != nil {
		return verifyErr("output footer: %v", err)
	}
	return printJSON(res)
}
