package api_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/vsagent/vsagent/internal/api"
)

// FuzzDecodeEvents feeds arbitrary streams to the event-stream reader: it
// must never panic, must report anything that is not a stream of events as
// ErrProtocol or ErrUnreachable, and must hand out only events with a
// sequence number.
func FuzzDecodeEvents(f *testing.F) {
	f.Add(`{"seq":1,"time":"2025-01-02T03:04:05Z","kind":"gated","guest":"web-1"}` + "\n")
	f.Add(`{"seq":1,"kind":"a"}{"seq":2,"kind":"b","new_field":[1,2]}`)
	f.Add(`{"seq":1,"kind":"a"}` + "\n" + `{"seq":`)
	f.Add("null\n")
	f.Add(`[1,2]`)
	f.Add(`{"seq":"one"}`)
	f.Add("")
	f.Fuzz(func(t *testing.T, stream string) {
		var got []api.Event
		err := api.DecodeEvents(strings.NewReader(stream), func(e api.Event) error {
			got = append(got, e)
			return nil
		})
		for _, e := range got {
			if e.Seq == 0 {
				t.Fatalf("event without a sequence number handed out: %+v", e)
			}
		}
		if err != nil && !errors.Is(err, api.ErrProtocol) && !errors.Is(err, api.ErrUnreachable) {
			t.Fatalf("DecodeEvents error %v matches neither ErrProtocol nor ErrUnreachable", err)
		}
	})
}

// FuzzRequest sends arbitrary paths and queries to the server: every
// answer is JSON with a status from the documented set, and nothing but a
// 200 comes without an error body.
func FuzzRequest(f *testing.F) {
	srv := api.NewServer(populated(), api.ServerOptions{Logger: discardLogger()})
	for _, seed := range []string{
		"/v1/status", "/v1/guests", "/v1/appliances", "/v1/flows?guest=web-1", "/v1/flows?guest=",
		"/v1/explain/web-1", "/v1/explain/%2e%2e", "/v1/events?after=0", "/v1/events?after=18446744073709551616",
		"/v1/events?follow=false&after=1", "/v1/../v1/status", "//v1/status", "/v1/status?a=%",
	} {
		f.Add("GET", seed)
	}
	f.Add("PUT", "/v1/guests")
	allowed := []int{http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusMethodNotAllowed}
	f.Fuzz(func(t *testing.T, method, target string) {
		if strings.Contains(target, "follow=") && !strings.Contains(target, "follow=false") {
			// A follow never ends by itself; it has tests of its own.
			return
		}
		req, err := http.NewRequest(method, "http://vsagent"+target, nil)
		if err != nil || req.URL.Host != "vsagent" {
			return
		}
		rec := httptest.NewRecorder()
		api.ServeAsPeer(srv, rec, req, 0)
		if !slices.Contains(allowed, rec.Code) {
			t.Fatalf("%s %s: HTTP %d: %s", method, target, rec.Code, rec.Body)
		}
		var anyJSON map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &anyJSON); err != nil {
			t.Fatalf("%s %s: answer is not a JSON object: %v: %q", method, target, err, rec.Body)
		}
		if rec.Code != http.StatusOK {
			var eb api.ErrorBody
			if json.Unmarshal(rec.Body.Bytes(), &eb); eb.Error.Code == "" || eb.Error.Message == "" {
				t.Fatalf("%s %s: HTTP %d without an error body: %q", method, target, rec.Code, rec.Body)
			}
		}
	})
}
