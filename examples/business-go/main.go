// Business service for the voice relay in Go: net/http and the standard library only (Go 1.19+).
// It does what examples/business_service.py does; read that file's docstring and
// docs/integration.md for the contract. In short:
//
//	the relay POSTs one JSON object to /chat (or /): {"auth":{...},"type":"chat"|"report"|...,
//	"details":{...,"session_id":"S"}}; you answer 200 text/event-stream, one `data: <json>`
//	line plus a blank line per event, each flushed at once, every event echoing
//	details.session_id as a top-level "session_id", the last one {"event":"message_end"}.
//
// Only event=message/type=chat is spoken (details.answer; details.emotion shows a face);
// every other event reaches the device untouched.
// With a signing secret every request must carry X-Relay-Signature: t=<unix seconds>,
// v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>; a missing or wrong one, or a t more than
// 5 minutes off, is answered 401.
// Device tools (docs/protocol.md §3.3), for a relay [[business]] with `device_tools = true`:
// a chat request then carries the device's MCP tools in details.tools. Asked "louder" /
// "大声一点" (or "quieter" / "小声一点") by a device that has self.audio_speaker.set_volume,
// this service answers with a `tool_call` event; the relay runs it on the device and POSTs a
// `tool_result` request, answered here with a spoken sentence.
// Run: go run . -port 8090 [-token T] [-signing-secret S]
// (or env BUSINESS_TOKEN, BUSINESS_SIGNING_SECRET).
package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	demoBatteryLevel  = 85  // a real service would answer from its own records
	signatureMaxSkewS = 300 // a signed request older (or newer) than this is refused
	maxBodyBytes      = 1 << 20
)

// Event is one SSE event; the field order is the order on the wire, as in the guide.
type Event struct {
	Event     string          `json:"event"`
	SessionID json.RawMessage `json:"session_id,omitempty"`
	Type      string          `json:"type,omitempty"`
	Details   any             `json:"details,omitempty"`
}

// Action is one device action of a command event.
type Action struct {
	Action string `json:"action"`
	Params any    `json:"params"`
}

// Chat is the details of a spoken event.
type Chat struct {
	Answer  string `json:"answer"`
	Emotion string `json:"emotion,omitempty"`
}

// ToolCall is the details of a tool_call event: which device tool to run, with what.
type ToolCall struct {
	CallID    string         `json:"call_id"`
	Name      string         `json:"name"`
	Arguments map[string]int `json:"arguments"`
}

// The firmware's volume tool, the phrases that change the volume and the volume each sets
// (docs/protocol.md §3.3; a model would first read self.get_device_status and go up from there).
const volumeTool = "self.audio_speaker.set_volume"

var volumePhrases = []struct {
	words  []string
	volume int
}{
	{[]string{"louder", "turn it up", "大声一点", "大声点", "声音大一点"}, 80},
	{[]string{"quieter", "turn it down", "小声一点", "小声点", "声音小一点"}, 30},
}

// Words in the user's message that trigger a device action (English matched case-insensitively).
var keywordActions = []struct {
	words    []string
	action   string
	duration int
}{
	{[]string{"dance", "跳舞"}, "dance", 5},
	{[]string{"wag", "摇尾巴"}, "wag_tail", 3},
}

// details.emotion (docs/protocol.md §2.2): the face on the device's screen while it answers.
var (
	greeting = regexp.MustCompile(`\b(hello|hi|hey|good (morning|afternoon|evening))\b|你好|您好|嗨|早上好|晚上好`)
	question = regexp.MustCompile(`[?？]|^(what|how|why|when|where|who|can|could|is|are|do|does)\b|吗|什么|怎么`)
)

func isChinese(text string) bool {
	for _, r := range text {
		if r >= 0x4e00 && r <= 0x9fff {
			return true
		}
	}
	return false
}

func emotionOf(msg string) string {
	lowered := strings.ToLower(msg)
	switch {
	case msg == "":
		return "confused"
	case greeting.MatchString(lowered):
		return "happy"
	case question.MatchString(lowered):
		return "thinking"
	}
	return "neutral"
}

// stringOf is raw as a string when it is a JSON string (not null, not a number).
func stringOf(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// objectOf is raw as an object's members when it is a JSON object (nil otherwise).
func objectOf(raw json.RawMessage) map[string]json.RawMessage {
	var members map[string]json.RawMessage
	if json.Unmarshal(raw, &members) != nil {
		return nil
	}
	return members
}

// hasTool tells whether tools, the chat request's details.tools, lists a tool called name.
func hasTool(tools json.RawMessage, name string) bool {
	var list []json.RawMessage
	if json.Unmarshal(tools, &list) != nil {
		return false
	}
	for _, tool := range list {
		if got, ok := stringOf(objectOf(tool)["name"]); ok && got == name {
			return true
		}
	}
	return false
}

// volumeCall is a tool_call setting the volume, when msg asks for it and the device has the tool.
func volumeCall(msg string, tools json.RawMessage) *Event {
	if !hasTool(tools, volumeTool) {
		return nil
	}
	lowered := strings.ToLower(msg)
	for _, p := range volumePhrases {
		for _, word := range p.words {
			if !strings.Contains(lowered, word) {
				continue
			}
			// The call id carries what this service needs to word the result.
			lang := "en"
			if isChinese(msg) {
				lang = "zh"
			}
			call := ToolCall{fmt.Sprintf("volume-%d-%s", p.volume, lang), volumeTool, map[string]int{"volume": p.volume}}
			return &Event{Event: "message", Type: "tool_call", Details: call}
		}
	}
	return nil
}

func command(action string, params any) Event {
	actions := []Action{{Action: action, Params: params}}
	return Event{Event: "message", Type: "command", Details: map[string]any{"actions": actions}}
}

// chatEvents answers a chat message: spoken sentences, then a command if a keyword was heard;
// a volume phrase with the device's volume tool is a tool call instead.
func chatEvents(details map[string]json.RawMessage) []Event {
	var msg string
	_ = json.Unmarshal(details["msg"], &msg) // not a string: nothing was heard
	msg = strings.TrimSpace(msg)
	if call := volumeCall(msg, details["tools"]); call != nil {
		return []Event{*call} // the answer is spoken once the relay posts the tool_result
	}
	var sentences []string
	switch {
	case isChinese(msg):
		sentences = []string{"你刚才说：「" + msg + "」。", "我是示例业务服务，这句话会被合成为语音。"}
	case msg != "":
		sentences = []string{`You said: "` + msg + `".`, "I am the reference business service speaking."}
	default:
		sentences = []string{"I did not catch that, could you say it again?"}
	}
	// Several message/chat events are spoken in order; the first carries the emotion.
	events := make([]Event, 0, len(sentences)+1)
	for n, sentence := range sentences {
		chat := Chat{Answer: sentence}
		if n == 0 {
			chat.Emotion = emotionOf(msg)
		}
		events = append(events, Event{Event: "message", Type: "chat", Details: chat})
	}
	lowered := strings.ToLower(msg)
	var actions []Action
	for _, k := range keywordActions {
		for _, word := range k.words {
			if strings.Contains(lowered, word) {
				actions = append(actions, Action{k.action, map[string]int{"duration": k.duration}})
				break
			}
		}
	}
	if len(actions) > 0 {
		events = append(events, Event{Event: "message", Type: "command", Details: map[string]any{"actions": actions}})
	}
	return events
}

// reportEvents: a report needs no answer beyond message_end; store details["events"] here if you care.
func reportEvents(map[string]json.RawMessage) []Event { return nil }

// resetEvents acknowledges a reset (details["type"] says what to reset, e.g. "count").
func resetEvents(map[string]json.RawMessage) []Event {
	return []Event{command("reset_complete", map[string]string{"status": "success"})}
}

// getEvents answers a get request with the server time and a battery level.
func getEvents(map[string]json.RawMessage) []Event {
	now := time.Now()
	params := struct {
		CurrentTime  string `json:"current_time"`
		TimestampMs  int64  `json:"timestamp_ms"`
		IsoTime      string `json:"iso_time"`
		BatteryLevel int    `json:"battery_level"`
	}{
		CurrentTime:  now.Format("2006-01-02 15:04:05"), // the guide's format, local time
		TimestampMs:  now.UnixMilli(),
		IsoTime:      now.Format("2006-01-02T15:04:05.000-07:00"),
		BatteryLevel: demoBatteryLevel,
	}
	return []Event{command("data_response", params)}
}

// toolResultEvents says what came of a tool call: the volume now set, or why the device did not do it.
func toolResultEvents(details map[string]json.RawMessage) []Event {
	callID, _ := stringOf(details["call_id"])
	var answer Chat
	if failure := objectOf(details["error"]); failure != nil {
		why, ok := stringOf(failure["message"])
		if !ok {
			why = "unknown"
		}
		answer = Chat{Answer: "The device could not do it: " + why + ".", Emotion: "sad"}
	} else if strings.HasPrefix(callID, "volume-") {
		volume, lang, _ := strings.Cut(strings.TrimPrefix(callID, "volume-"), "-")
		said := "Done, the volume is now " + volume + "."
		if lang == "zh" {
			said = "好的，音量已调到 " + volume + "。"
		}
		answer = Chat{Answer: said, Emotion: "happy"}
	} else {
		answer = Chat{Answer: "Done."}
	}
	return []Event{{Event: "message", Type: "chat", Details: answer}}
}

// mcpNotificationEvents: a device's MCP notification (its state changed, ...) needs no answer.
func mcpNotificationEvents(map[string]json.RawMessage) []Event { return nil }

var handlers = map[string]func(map[string]json.RawMessage) []Event{
	"chat": chatEvents, "report": reportEvents, "reset": resetEvents, "get": getEvents,
	"tool_result": toolResultEvents, "mcp_notification": mcpNotificationEvents,
}

// relaySigned tells whether header (X-Relay-Signature) signs body, the raw bytes received,
// with secret, at a time within signatureMaxSkewS of now.
func relaySigned(secret []byte, header string, body []byte, now time.Time) bool {
	fields := map[string]string{}
	for _, part := range strings.Split(header, ",") {
		if key, value, ok := strings.Cut(part, "="); ok {
			fields[key] = value
		}
	}
	t := fields["t"]
	if t == "" || strings.Trim(t, "0123456789") != "" {
		return false
	}
	seconds, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		return false
	}
	if skew := now.Sub(time.Unix(seconds, 0)); skew > signatureMaxSkewS*time.Second || skew < -signatureMaxSkewS*time.Second {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(t + "."))
	mac.Write(body)
	return hmac.Equal([]byte(hex.EncodeToString(mac.Sum(nil))), []byte(fields["v1"]))
}

type server struct {
	token         string
	signingSecret []byte
	chatDelay     time.Duration
}

func jsonError(w http.ResponseWriter, status int, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": message})
}

type request struct {
	kind    string
	details map[string]json.RawMessage
}

// parse checks the body; the error is the 400 answer's message.
func parse(raw []byte) (request, error) {
	var body map[string]json.RawMessage
	var req request
	if err := json.Unmarshal(raw, &body); err != nil && !json.Valid(raw) {
		return req, errors.New("body is not JSON")
	}
	if body == nil || json.Unmarshal(body["type"], &req.kind) != nil || bytes.Equal(body["type"], []byte("null")) {
		return req, errors.New(`body must be a JSON object with a string "type"`)
	}
	if json.Unmarshal(body["details"], &req.details) != nil || req.details == nil {
		req.details = map[string]json.RawMessage{}
	}
	return req, nil
}

func encode(event Event) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(event)
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// ServeHTTP handles POST /chat: validate the request, then stream the answer as Server-Sent Events.
func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/chat" && r.URL.Path != "/" {
		jsonError(w, http.StatusNotFound, "not found")
		return
	}
	if r.Method != http.MethodPost {
		jsonError(w, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	if s.token != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+s.token)) != 1 {
		jsonError(w, http.StatusUnauthorized, "unauthorized")
		return
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		jsonError(w, http.StatusRequestEntityTooLarge, "body too large")
		return
	}
	if s.signingSecret != nil && !relaySigned(s.signingSecret, r.Header.Get("X-Relay-Signature"), raw, time.Now()) {
		jsonError(w, http.StatusUnauthorized, "missing, wrong or expired X-Relay-Signature")
		return
	}
	// The device this request is for, as the relay vouches for it: use it (not the body's
	// auth.device_id, which a device can write as it likes) to look up your own records.
	deviceID, err := url.PathUnescape(r.Header.Get("X-Relay-Device-Id"))
	if err != nil {
		deviceID = r.Header.Get("X-Relay-Device-Id")
	}
	_ = deviceID
	req, err := parse(raw)
	if err != nil {
		jsonError(w, http.StatusBadRequest, err.Error())
		return
	}
	s.stream(w, r, req)
}

func (s *server) stream(w http.ResponseWriter, r *http.Request, req request) {
	var events []Event
	if handler, ok := handlers[req.kind]; ok {
		events = handler(req.details)
	} else {
		kind := []rune(req.kind)
		if len(kind) > 40 {
			kind = kind[:40]
		}
		message := fmt.Sprintf("unsupported request type '%s'", string(kind))
		events = []Event{{Event: "error", Details: map[string]string{"code": "unknown_type", "message": message}}}
	}
	events = append(events, Event{Event: "message_end"})
	var delay time.Duration
	if req.kind == "chat" {
		delay = s.chatDelay
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	for _, event := range events {
		if delay > 0 {
			select { // stands in for model latency before each event
			case <-time.After(delay):
			case <-r.Context().Done():
			}
		}
		// Echo on every event (docs/protocol.md §2.3).
		event.SessionID = req.details["session_id"]
		_, err := w.Write(append(append([]byte("data: "), encode(event)...), '\n', '\n'))
		if err == nil && flusher != nil {
			flusher.Flush()
		}
		if err != nil || r.Context().Err() != nil {
			// The relay closes the connection when it cancels a turn (the user interrupted, or
			// said something new): nobody reads the rest of this answer, and that is no error.
			log.Printf("INFO client went away during a %q answer", req.kind)
			return
		}
	}
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 8090, "port to listen on")
	token := flag.String("token", os.Getenv("BUSINESS_TOKEN"), "Bearer token the relay must send")
	secret := flag.String("signing-secret", os.Getenv("BUSINESS_SIGNING_SECRET"),
		"the relay's [[business]] signing_secret: requests must carry X-Relay-Signature")
	chatDelay := flag.Float64("chat-delay", 0, "seconds before each chat event")
	flag.Parse()
	s := &server{token: *token, chatDelay: time.Duration(*chatDelay * float64(time.Second))}
	if *secret != "" {
		s.signingSecret = []byte(*secret)
	}
	srv := &http.Server{
		Addr:              net.JoinHostPort(*host, strconv.Itoa(*port)),
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	log.Printf("INFO listening on http://%s", srv.Addr)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
