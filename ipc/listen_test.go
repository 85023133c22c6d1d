//go:build linux

package ipc

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestListenModeFollowsNoSymlink: an attacker who can write the socket's
// directory replaces the socket with a symlink to a file of ours between
// bind and the mode change. Listen used os.Chmod, which followed the link
// and made the victim file 0666; now it refuses the path and leaves the
// victim alone.
func TestListenModeFollowsNoSymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sock")
	testHookListenBound = func(p string) {
		if err := os.Remove(p); err != nil {
			t.Error(err)
		}
		if err := os.Symlink(victim, p); err != nil {
			t.Error(err)
		}
	}
	defer func() { testHookListenBound = nil }()
	l, err := Listen(path, 0o666)
	if err == nil {
		l.Close()
		t.Fatal("Listen succeeded on a path swapped for a symlink")
	}
	if !errors.Is(err, os.ErrExist) {
		t.Errorf("Listen: %v, want os.ErrExist", err)
	}
	fi, err := os.Stat(victim)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("victim file mode %v, want 0600", fi.Mode().Perm())
	}
}

// TestListenMode: the socket file gets exactly the mode asked for,
// whatever the umask, and 0600 by default; it is removed on Close.
func TestListenMode(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		mode, want os.FileMode
	}{{0, 0o600}, {0o666, 0o666}, {0o660, 0o660}} {
		path := filepath.Join(dir, "sock")
		l, err := Listen(path, tc.mode)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != tc.want {
			t.Errorf("Listen(%v): file mode %v, want socket %v", tc.mode, fi.Mode(), tc.want)
		}
		srv, err := NewServer(nil)
		if err != nil {
			t.Fatal(err)
		}
		srv.Register(echoService())
		go srv.Serve(l)
		cl := dial(t, path, nil)
		if _, err := cl.Call(testCtx(t), msgEcho, []byte("x")); err != nil {
			t.Fatal(err)
		}
		cl.Close()
		srv.Close()
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket file left after Close: %v", err)
		}
	}
}
