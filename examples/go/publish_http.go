//go:build ignore

// Publish an event through hasses' HTTP API and print the id it got.
//
//	go run publish_http.go room1 hello [EVENT]
//
// Standard library only. Settings come from the environment:
//
//	HASSES_API      the API's base URL (default http://127.0.0.1:8086)
//	HASSES_API_KEY  the key hasses was started with (--api-key), if any
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"time"
)

// The body of POST /publish. To is "room1", "user*", "*", or a list of them.
type publication struct {
	To     any    `json:"to"`
	Data   string `json:"data"`
	Event  string `json:"event,omitempty"`  // the page listens with addEventListener(event, ...)
	Except string `json:"except,omitempty"` // the client (its id= or token's sub) that must not get it
}

// The answer: 200 {"id":"1765100000000001"}, 202 {"queued":true}, or {"error":"why"}.
type answer struct {
	ID    string `json:"id"`
	Error string `json:"error"`
}

var client = &http.Client{Timeout: 5 * time.Second}

// publish sends p and returns the event's id, as subscribers see it in `id:`.
func publish(api, apiKey string, p publication) (string, error) {
	body, err := json.Marshal(p)
	if err != nil {
		return "", err
	}
	request, err := http.NewRequest("POST", api+"/publish", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	request.Header.Set("Content-Type", "application/json")
	if apiKey != "" {
		request.Header.Set("Authorization", "Bearer "+apiKey)
	}
	response, err := client.Do(request)
	if err != nil {
		return "", fmt.Errorf("cannot reach hasses: %w", err)
	}
	defer response.Body.Close()
	var a answer
	if err := json.NewDecoder(response.Body).Decode(&a); err != nil {
		return "", fmt.Errorf("hasses answered %d: %w", response.StatusCode, err)
	}
	if response.StatusCode == http.StatusAccepted {
		return "queued", nil // {"queued":true}: a cluster node holds it while Redis is unreachable
	}
	if response.StatusCode != http.StatusOK {
		return "", fmt.Errorf("hasses answered %d: %s", response.StatusCode, a.Error)
	}
	return a.ID, nil
}

func main() {
	if len(os.Args) < 3 || len(os.Args) > 4 {
		fmt.Fprintln(os.Stderr, "usage: go run publish_http.go TARGET DATA [EVENT]")
		os.Exit(2)
	}
	p := publication{To: os.Args[1], Data: os.Args[2]}
	if len(os.Args) == 4 {
		p.Event = os.Args[3]
	}
	api := os.Getenv("HASSES_API")
	if api == "" {
		api = "http://127.0.0.1:8086"
	}
	id, err := publish(api, os.Getenv("HASSES_API_KEY"), p)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(id)
}
