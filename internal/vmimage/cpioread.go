package vmimage

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// ErrBadArchive is wrapped by every error about the content of an archive
// that WalkInitramfs reads (as opposed to an error of the reader itself).
var ErrBadArchive = errors.New("vmimage: not a valid initramfs")

// Entry is one member of an initramfs.
type Entry struct {
	// Name is the path inside the image, without a leading slash.
	Name string
	// Mode holds the file type and permission bits as stat(2) reports them.
	Mode uint32
	Size int64
}

// IsRegular reports whether the entry is a regular file.
func (e Entry) IsRegular() bool { return e.Mode&^0o7777 == modeFile }

const (
	cpioHeaderLen = 110
	// cpioMaxName is PATH_MAX: the kernel refuses longer names.
	cpioMaxName = 4096
	cpioTrailer = "TRAILER!!!"
)

// WalkInitramfs reads a newc cpio archive, gzip-compressed or not, and calls
// fn for every entry up to the trailer with a reader of the entry's data;
// fn need not read it all. It stops at fn's first error and returns it.
func WalkInitramfs(r io.Reader, fn func(Entry, io.Reader) error) error {
	br := bufio.NewReader(r)
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadArchive, err)
		}
		defer zr.Close()
		return walkCpio(badContent{zr}, fn)
	}
	return walkCpio(br, fn)
}

// badContent marks the decompressor's errors (corrupt data, checksum) as
// errors of the archive rather than of the reader underneath.
type badContent struct{ r io.Reader }

func (b badContent) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF && !errors.Is(err, ErrBadArchive) {
		err = fmt.Errorf("%w: %w", ErrBadArchive, err)
	}
	return n, err
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

// skipPad consumes the zero padding that aligns the next item to 4 bytes.
func (c *countingReader) skipPad() error {
	if r := c.n % 4; r != 0 {
		if _, err := io.CopyN(io.Discard, c, 4-r); err != nil {
			return truncated(err)
		}
	}
	return nil
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated", ErrBadArchive)
	}
	return err
}

func walkCpio(r io.Reader, fn func(Entry, io.Reader) error) error {
	cr := &countingReader{r: r}
	var hdr [cpioHeaderLen]byte
	name := make([]byte, cpioMaxName)
	for {
		if _, err := io.ReadFull(cr, hdr[:]); err != nil {
			return truncated(err)
		}
		if m := string(hdr[:6]); m != "070701" && m != "070702" {
			return fmt.Errorf("%w: bad magic %q at offset %d", ErrBadArchive, m, cr.n-cpioHeaderLen)
		}
		var field [13]uint32
		for i := range field {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return fmt.Errorf("%w: header field %d is not hex", ErrBadArchive, i)
			}
			field[i] = uint32(v)
		}
		mode, size, nameLen := field[1], int64(field[6]), int(field[11])
		if nameLen < 2 || nameLen > cpioMaxName {
			return fmt.Errorf("%w: name length %d", ErrBadArchive, nameLen)
		}
		if _, err := io.ReadFull(cr, name[:nameLen]); err != nil {
			return truncated(err)
		}
		if name[nameLen-1] != 0 {
			return fmt.Errorf("%w: name is not NUL-terminated", ErrBadArchive)
		}
		e := Entry{Name: string(name[:nameLen-1]), Mode: mode, Size: size}
		if err := cr.skipPad(); err != nil {
			return err
		}
		if e.Name == cpioTrailer {
			return nil
		}
		data := &io.LimitedReader{R: cr, N: size}
		if err := fn(e, data); err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, data); err != nil {
			return truncated(err)
		}
		if data.N > 0 {
			return fmt.Errorf("%w: truncated in %s", ErrBadArchive, e.Name)
		}
		if err := cr.skipPad(); err != nil {
			return err
		}
	}
}
