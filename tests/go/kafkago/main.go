// kafka-go (segmentio, Debian's 0.2.x) smoke test against a running Sluice broker.
//
// kafka-go 0.2 predates ApiVersions negotiation: it always speaks Metadata v1,
// Produce v2 (message format v1), Fetch v2, ListOffsets v1 and CreateTopics v0.
// Kafka 4 (and the kafka-protocol crate) dropped Produce < v3, Fetch < v4 and
// CreateTopics < v2; Sluice serves them by hand (protocol::legacy). This
// program first asks the broker (ApiVersions v0) whether it advertises the
// record versions; if it does not, it prints a SKIPPED line and exits 77, which
// tests/interop/run.sh reports as skipped. If the broker does advertise them,
// the full produce/consume and group checks must pass.
//
// The codec check: per codec (none, gzip, snappy, lz4) write N keyed records
// with kafka.NewWriter to a fresh (auto-created) topic, read them back with
// kafka.NewReader on partition 0 without a consumer group and compare keys,
// values and offsets.
//
// The consumer-group check (after the codec checks; -group=false skips it):
//  1. Create a 6-partition topic with kafka-go's Conn.CreateTopics; wait for
//     Metadata v1 to show 6 partitions with leaders.
//  2. Start two kafka.NewReader readers with the same GroupID and wait until
//     the group has settled: both readers subscribed in the same generation to
//     disjoint partition sets covering all 6 partitions (kafka-go 0.2 has no
//     assignment callback, so this is read from its Logger output). Only then
//     write 600 keyed records (Hash balancer, FNV-1a like Sarama, so the
//     partition of every key is known in advance). Both readers consume
//     concurrently (FetchMessage, CommitMessages in batches). Checked: every
//     record seen, on the partition its key hashes to, with its value; no
//     duplicates; each partition read by exactly one reader, the one the
//     settled assignment gave it to; no rebalance after settling; no fetch or
//     commit errors.
//  3. Close both readers, write 60 more records, start one new reader in the
//     same group (ReadMessage, i.e. kafka-go's commit-on-read) and check that
//     the first 60 records it gets are exactly the 60 new ones, at offsets past
//     the first 600 (it resumed from the committed offsets), and that nothing
//     else follows.
//
// kafka-go 0.2.1's Reader.Close never sends LeaveGroup (it dials the
// coordinator with its already cancelled context), so in step 3 the broker
// only lets the new reader in once the two closed readers' sessions expire:
// hence SessionTimeout 6 s (Kafka's group.min.session.timeout.ms default).
// Every wait has a deadline; the group check takes ~15 s on a healthy broker.
//
// Exit status: 0 ok, 1 a check failed, 77 skipped (versions not advertised).
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	kafka "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/gzip"
	"github.com/segmentio/kafka-go/lz4"
	"github.com/segmentio/kafka-go/snappy"
)

var failures int

func failf(format string, args ...interface{}) {
	failures++
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
}

type versionRange struct{ min, max int16 }

// rawRequest sends one request with a v1 (non-flexible) header and returns the
// response body after the correlation id (a v0 response header).
func rawRequest(addr string, key, version int16, body []byte, timeout time.Duration) ([]byte, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	const correlationID = 7
	clientID := "sluice-interop-kafka-go-probe"
	var req bytes.Buffer
	_ = binary.Write(&req, binary.BigEndian, key)
	_ = binary.Write(&req, binary.BigEndian, version)
	_ = binary.Write(&req, binary.BigEndian, int32(correlationID))
	_ = binary.Write(&req, binary.BigEndian, int16(len(clientID)))
	req.WriteString(clientID)
	req.Write(body)
	var frame bytes.Buffer
	_ = binary.Write(&frame, binary.BigEndian, int32(req.Len()))
	frame.Write(req.Bytes())
	if _, err := conn.Write(frame.Bytes()); err != nil {
		return nil, err
	}
	var size int32
	if err := binary.Read(conn, binary.BigEndian, &size); err != nil {
		return nil, err
	}
	if size < 4 || size > 1<<20 {
		return nil, fmt.Errorf("implausible response size %d (api key %d v%d)", size, key, version)
	}
	resp := make([]byte, size)
	if _, err := io.ReadFull(conn, resp); err != nil {
		return nil, err
	}
	if corr := int32(binary.BigEndian.Uint32(resp)); corr != correlationID {
		return nil, fmt.Errorf("correlation id %d, want %d", corr, correlationID)
	}
	return resp[4:], nil
}

// apiVersions sends a raw ApiVersions v0 request and returns key -> range.
func apiVersions(addr string) (map[int16]versionRange, error) {
	resp, err := rawRequest(addr, 18, 0, nil, 10*time.Second)
	if err != nil {
		return nil, err
	}
	if len(resp) < 6 {
		return nil, fmt.Errorf("implausible ApiVersions response size %d", len(resp)+4)
	}
	r := bytes.NewReader(resp)
	var errCode int16
	var n int32
	_ = binary.Read(r, binary.BigEndian, &errCode)
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return nil, err
	}
	out := map[int16]versionRange{}
	for i := int32(0); i < n; i++ {
		var key, min, max int16
		if err := binary.Read(r, binary.BigEndian, &key); err != nil {
			return nil, err
		}
		_ = binary.Read(r, binary.BigEndian, &min)
		if err := binary.Read(r, binary.BigEndian, &max); err != nil {
			return nil, err
		}
		out[key] = versionRange{min, max}
	}
	if errCode != 0 {
		return out, fmt.Errorf("ApiVersions v0 error code %d", errCode)
	}
	return out, nil
}

// apiNeed is a request kafka-go 0.2 sends, always at one fixed version.
type apiNeed struct {
	key     int16
	name    string
	version int16
}

// missingVersions describes the needs the broker does not advertise.
func missingVersions(versions map[int16]versionRange, needs []apiNeed) []string {
	var missing []string
	for _, need := range needs {
		vr, ok := versions[need.key]
		if !ok || need.version < vr.min || need.version > vr.max {
			adv := "not advertised"
			if ok {
				adv = fmt.Sprintf("advertised v%d-v%d", vr.min, vr.max)
			}
			missing = append(missing, fmt.Sprintf("%s v%d (%s)", need.name, need.version, adv))
		}
	}
	return missing
}

func runCodec(brokers []string, name string, codec kafka.CompressionCodec, n int, runID string) {
	topic := fmt.Sprintf("go-kafkago-%s-%s", name, runID)
	fmt.Printf("--- kafka-go codec=%s topic=%s n=%d\n", name, topic, n)
	// Auto-create the topic and wait for its leader first. The Metadata answer
	// that auto-creates a topic has no leader yet (LEADER_NOT_AVAILABLE, as in
	// Kafka), and kafka-go 0.2 ignores that error: its partition writer dials
	// ":0", fails, and WriteMessages retries that batch only after the later
	// batches were written, so the records would not be at offsets 0..n-1.
	if err := waitPartitions(brokers[0], topic, 1, 15*time.Second); err != nil {
		failf("[%s] topic %s: %v", name, topic, err)
		return
	}
	w := kafka.NewWriter(kafka.WriterConfig{
		Brokers:          brokers,
		Topic:            topic,
		RequiredAcks:     -1,
		BatchSize:        50,
		BatchTimeout:     10 * time.Millisecond,
		MaxAttempts:      10,
		ReadTimeout:      10 * time.Second,
		WriteTimeout:     10 * time.Second,
		CompressionCodec: codec,
	})
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{
			Key:   []byte(fmt.Sprintf("key-%05d", i)),
			Value: []byte(fmt.Sprintf("value-%05d-%s-%s", i, name, strings.Repeat("xyz", i%40))),
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		failf("[%s] WriteMessages: %v", name, err)
		_ = w.Close()
		return
	}
	_ = w.Close()

	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:   brokers,
		Topic:     topic,
		Partition: 0,
		MinBytes:  1,
		MaxBytes:  10 << 20,
		MaxWait:   500 * time.Millisecond,
	})
	defer r.Close()
	if err := r.SetOffset(kafka.FirstOffset); err != nil {
		failf("[%s] SetOffset: %v", name, err)
		return
	}
	for i := 0; i < n; i++ {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			failf("[%s] ReadMessage after %d of %d: %v", name, i, n, err)
			return
		}
		if m.Offset != int64(i) {
			failf("[%s] record %d has offset %d", name, i, m.Offset)
		}
		if !bytes.Equal(m.Key, msgs[i].Key) || !bytes.Equal(m.Value, msgs[i].Value) {
			failf("[%s] record %d: got %q/%q want %q/%q", name, i, m.Key, m.Value, msgs[i].Key, msgs[i].Value)
			return
		}
	}
	fmt.Printf("    wrote and read back %d records\n", n)
}

func main() {
	bootstrap := flag.String("brokers", os.Getenv("SLUICE_BOOTSTRAP"), "comma-separated bootstrap brokers (default $SLUICE_BOOTSTRAP)")
	n := flag.Int("n", 200, "records per codec")
	group := flag.Bool("group", true, "run the consumer-group check after the codec checks")
	defaultRF := 1
	if v, err := strconv.Atoi(os.Getenv("SLUICE_REPLICATION_FACTOR")); err == nil && v > 0 {
		defaultRF = v
	}
	rf := flag.Int("replication-factor", defaultRF, "replication factor of the group check's topic (default $SLUICE_REPLICATION_FACTOR or 1)")
	verbose := flag.Bool("v", false, "echo kafka-go's group reader log lines to stderr as they happen")
	flag.Parse()
	if *bootstrap == "" {
		fmt.Fprintln(os.Stderr, "no brokers: pass -brokers or set SLUICE_BOOTSTRAP")
		os.Exit(2)
	}
	brokers := strings.Split(*bootstrap, ",")

	versions, err := apiVersions(brokers[0])
	if err != nil {
		fmt.Printf("kafka-go smoke: FAILED: ApiVersions v0 probe: %v\n", err)
		os.Exit(1)
	}
	// What kafka-go 0.2 sends, fixed: key -> version.
	missing := missingVersions(versions, []apiNeed{
		{3, "Metadata", 1}, {0, "Produce", 2}, {1, "Fetch", 2}, {2, "ListOffsets", 1},
	})
	if len(missing) > 0 {
		fmt.Printf("SKIPPED: kafka-go 0.2 smoke: broker does not support the fixed request versions kafka-go 0.2 sends: %s\n",
			strings.Join(missing, ", "))
		os.Exit(77)
	}

	runID := fmt.Sprintf("%d", time.Now().UnixNano())
	codecs := []struct {
		name  string
		codec kafka.CompressionCodec
	}{
		{"none", nil},
		{"gzip", gzip.NewCompressionCodec()},
		{"snappy", snappy.NewCompressionCodec()},
		{"lz4", lz4.NewCompressionCodec()},
	}
	for _, c := range codecs {
		runCodec(brokers, c.name, c.codec, *n, runID)
	}
	if *group {
		runGroupCheck(brokers, versions, runID, *rf, *verbose)
	}
	if failures > 0 {
		fmt.Printf("kafka-go smoke: FAILED (%d failures)\n", failures)
		os.Exit(1)
	}
	fmt.Println("kafka-go smoke: OK")
}

// ------------------------------------------------------------ consumer groups

const (
	groupPartitions = 6
	groupRecords    = 600
	groupLate       = 60
	groupBatch      = 50 // records per CommitMessages call in step 2
)

// What kafka-go 0.2's Reader sends for a consumer group (conn.go), each at one
// fixed version. LeaveGroup is only sent on error paths (see the top comment).
var groupNeeds = []apiNeed{
	{10, "FindCoordinator", 0}, {11, "JoinGroup", 1}, {14, "SyncGroup", 0},
	{12, "Heartbeat", 0}, {13, "LeaveGroup", 0}, {8, "OffsetCommit", 2}, {9, "OffsetFetch", 1},
	{19, "CreateTopics", 0},
}

// hashPartition is the partition kafka.Hash (FNV-1a, as Sarama) picks for key.
func hashPartition(key []byte, partitions int) int {
	h := fnv.New32a()
	_, _ = h.Write(key)
	p := int(h.Sum32()) % partitions
	if p < 0 {
		p = -p
	}
	return p
}

// issues collects check failures of one kind so a systematic problem gives one
// FAIL line with a count and the first example instead of hundreds of lines.
type issues struct {
	order []string
	count map[string]int
	first map[string]string
}

func (s *issues) add(kind, format string, args ...interface{}) {
	if s.count == nil {
		s.count, s.first = map[string]int{}, map[string]string{}
	}
	if s.count[kind] == 0 {
		s.order = append(s.order, kind)
		s.first[kind] = fmt.Sprintf(format, args...)
	}
	s.count[kind]++
}

func (s *issues) report(prefix string) {
	for _, kind := range s.order {
		failf("%s %s: %d time(s), first: %s", prefix, kind, s.count[kind], s.first[kind])
	}
}

// memberTracker is the Logger (and ErrorLogger) of one group reader. kafka-go 0.2
// reports its group membership only there: "joinGroup succeeded ...
// generationID=N, memberID=M" after JoinGroup, "subscribed to partitions:
// map[P:OFFSET ...]" once SyncGroup and OffsetFetch are done and the partition
// readers start, and "rebalancing consumer group" when a handshake begins (the
// previous partition readers have been stopped by then).
type memberTracker struct {
	name    string
	verbose bool

	mu       sync.Mutex
	gen      int32 // generation of the last successful JoinGroup
	memberID string
	joins    int   // successful JoinGroups
	subGen   int32 // generation of the current subscription, 0 while rebalancing
	parts    []int // partitions of the current subscription
	tail     []string
}

type memberState struct {
	gen, subGen int32
	memberID    string
	joins       int
	parts       []int
}

func (s memberState) String() string {
	if s.subGen == 0 {
		return fmt.Sprintf("generation %d, joins %d, not subscribed", s.gen, s.joins)
	}
	return fmt.Sprintf("generation %d, joins %d, partitions %v", s.subGen, s.joins, s.parts)
}

func (t *memberTracker) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\n")
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.tail) >= 60 {
		t.tail = t.tail[1:]
	}
	t.tail = append(t.tail, line)
	if t.verbose {
		fmt.Fprintf(os.Stderr, "    [%s] %s\n", t.name, line)
	}
	switch {
	case strings.Contains(line, "rebalancing consumer group"):
		t.subGen, t.parts = 0, nil
	case strings.Contains(line, "joinGroup succeeded"):
		if i := strings.Index(line, "generationID="); i >= 0 {
			rest := line[i+len("generationID="):]
			g, id, _ := strings.Cut(rest, ", memberID=")
			if n, err := strconv.Atoi(strings.TrimSpace(g)); err == nil {
				t.gen, t.memberID = int32(n), strings.TrimSpace(id)
				t.joins++
			}
		}
	case strings.Contains(line, "subscribed to partitions: map["):
		m := line[strings.Index(line, "map[")+len("map["):]
		if j := strings.LastIndex(m, "]"); j >= 0 {
			m = m[:j]
		}
		var parts []int
		for _, f := range strings.Fields(m) {
			p, _, _ := strings.Cut(f, ":")
			if n, err := strconv.Atoi(p); err == nil {
				parts = append(parts, n)
			}
		}
		sort.Ints(parts)
		t.subGen, t.parts = t.gen, parts
	}
	return len(p), nil
}

func (t *memberTracker) state() memberState {
	t.mu.Lock()
	defer t.mu.Unlock()
	return memberState{gen: t.gen, subGen: t.subGen, memberID: t.memberID, joins: t.joins,
		parts: append([]int(nil), t.parts...)}
}

func (t *memberTracker) dump() {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(os.Stderr, "----- last %d kafka-go log lines of group reader %s -----\n", len(t.tail), t.name)
	for _, l := range t.tail {
		fmt.Fprintf(os.Stderr, "    %s\n", l)
	}
}

// settledAssignment returns partition -> member name once every member is
// subscribed in its latest generation, all in the same one, to disjoint sets
// covering partitions 0..n-1; else why not.
func settledAssignment(n int, members []*memberTracker) (map[int]string, int32, string) {
	owner := map[int]string{}
	gen := int32(-1)
	var states []string
	for _, m := range members {
		states = append(states, fmt.Sprintf("%s: %v", m.name, m.state()))
	}
	all := strings.Join(states, "; ")
	for _, m := range members {
		s := m.state()
		if s.subGen == 0 || s.subGen != s.gen {
			return nil, 0, all
		}
		if gen == -1 {
			gen = s.subGen
		} else if s.subGen != gen {
			return nil, 0, all
		}
		for _, p := range s.parts {
			if o, dup := owner[p]; dup {
				return nil, 0, fmt.Sprintf("partition %d assigned to both %s and %s in generation %d (%s)", p, o, m.name, gen, all)
			}
			owner[p] = m.name
		}
	}
	for p := 0; p < n; p++ {
		if _, ok := owner[p]; !ok {
			return nil, 0, fmt.Sprintf("partition %d assigned to nobody in generation %d; kafka-go only starts partitions the OffsetFetch v1 response lists (%s)", p, gen, all)
		}
	}
	return owner, gen, ""
}

func newGroupReader(brokers []string, topic, group string, t *memberTracker) *kafka.Reader {
	logger := log.New(t, "", log.Lmicroseconds)
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers: brokers,
		GroupID: group,
		Topic:   topic,
		// Partition must stay 0 with a GroupID (NewReader panics otherwise).
		MinBytes: 1, // the default is MaxBytes: every fetch would wait MaxWait
		MaxBytes: 10 << 20,
		MaxWait:  500 * time.Millisecond, // also bounds how long a rebalance waits for the partition readers to stop
		// A member learns of a rebalance only from a failed Heartbeat: beat
		// often. 6 s is Kafka's (and Sluice's) group.min.session.timeout.ms.
		HeartbeatInterval: 500 * time.Millisecond,
		SessionTimeout:    6 * time.Second,
		RebalanceTimeout:  10 * time.Second,
		// CommitInterval 0: CommitMessages (and ReadMessage's commit) waits for
		// the OffsetCommit response. kafka-go 0.2's interval mode flushes on the
		// heartbeat tick and can drop commits still queued when Close is called.
		CommitInterval: 0,
		Logger:         logger,
		ErrorLogger:    logger,
	})
}

// closeReader closes r, failing (and giving up on it) if that takes longer than d:
// kafka-go 0.2's coordinator connection has no deadlines, so Close waits for an
// unanswered Heartbeat/JoinGroup forever.
func closeReader(name string, r *kafka.Reader, d time.Duration) {
	done := make(chan struct{})
	go func() {
		_ = r.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		failf("[group] closing reader %s did not finish within %v", name, d)
	}
}

// createGroupTopic creates topic with groupPartitions partitions through
// kafka-go's Conn.CreateTopics (CreateTopics v0, all kafka-go 0.2 sends).
func createGroupTopic(brokers []string, topic string, rf int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	return conn.CreateTopics(kafka.TopicConfig{
		Topic:             topic,
		NumPartitions:     groupPartitions,
		ReplicationFactor: rf,
	})
}

// waitPartitions polls Metadata v1 (kafka-go's Conn.ReadPartitions) until topic
// has n partitions, each with a leader.
func waitPartitions(broker, topic string, n int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		conn, err := kafka.Dial("tcp", broker)
		var ps []kafka.Partition
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			ps, err = conn.ReadPartitions(topic)
			conn.Close()
		}
		led := 0
		for _, p := range ps {
			if p.Leader.Host != "" {
				led++
			}
		}
		if err == nil && len(ps) == n && led == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %d partitions, %d with a leader, want %d (last error: %v)", d, len(ps), led, n, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// writeGroupRecords writes msgs with a Hash-balanced Writer.
func writeGroupRecords(brokers []string, topic string, msgs []kafka.Message) error {
	w := kafka.NewWriter(kafka.WriterConfig{
		Brokers:      brokers,
		Topic:        topic,
		Balancer:     &kafka.Hash{},
		RequiredAcks: -1,
		BatchSize:    50,
		BatchTimeout: 10 * time.Millisecond,
		MaxAttempts:  10,
		ReadTimeout:  10 * time.Second,
		WriteTimeout: 10 * time.Second,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := w.WriteMessages(ctx, msgs...)
	_ = w.Close()
	return err
}

type groupEvent struct {
	reader string
	msg    kafka.Message
}

// consumerResult is written by its consumer goroutine only, read once it ended.
type consumerResult struct {
	fetched, commits int
	commitErrs       []string
	fetchErrs        []string
}

// consumeAndCommit fetches from r until ctx ends, reporting every message on out,
// and commits what it fetched with CommitMessages (synchronous, see
// newGroupReader) every groupBatch messages, whenever nothing arrived for 250 ms,
// and once more at the end. Commits get their own deadline so that stopping the
// consumer never aborts one half-way.
func consumeAndCommit(ctx context.Context, name string, r *kafka.Reader, out chan<- groupEvent, res *consumerResult) {
	var pending []kafka.Message
	commit := func() {
		if len(pending) == 0 {
			return
		}
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.CommitMessages(cctx, pending...); err != nil {
			res.commitErrs = append(res.commitErrs, fmt.Sprintf("CommitMessages of %d messages (last p%d@%d): %v",
				len(pending), pending[len(pending)-1].Partition, pending[len(pending)-1].Offset, err))
		} else {
			res.commits++
		}
		pending = pending[:0]
	}
	defer commit()
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
		m, err := r.FetchMessage(fctx)
		idle := fctx.Err() != nil
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if idle {
				commit()
				continue
			}
			res.fetchErrs = append(res.fetchErrs, err.Error())
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		res.fetched++
		pending = append(pending, m)
		select {
		case out <- groupEvent{reader: name, msg: m}:
		case <-ctx.Done():
			return
		}
		if len(pending) >= groupBatch {
			commit()
		}
	}
}

// runGroupCheck is the consumer-group check described at the top of the file.
func runGroupCheck(brokers []string, versions map[int16]versionRange, runID string, rf int, verbose bool) {
	topic := "go-kafkago-group-" + runID
	groupID := "go-kafkago-group-" + runID
	fmt.Printf("--- kafka-go consumer group topic=%s partitions=%d records=%d+%d\n", topic, groupPartitions, groupRecords, groupLate)
	if missing := missingVersions(versions, groupNeeds); len(missing) > 0 {
		failf("[group] broker does not advertise the group request versions kafka-go 0.2 sends: %s", strings.Join(missing, ", "))
		return
	}
	failuresBefore := failures
	t0 := time.Now()
	var trackers []*memberTracker
	defer func() {
		if failures > failuresBefore {
			for _, t := range trackers {
				t.dump()
			}
		}
	}()

	// 1. The topic.
	if err := createGroupTopic(brokers, topic, rf); err != nil {
		failf("[group] creating topic %s with %d partitions: %v", topic, groupPartitions, err)
		return
	}
	if err := waitPartitions(brokers[0], topic, groupPartitions, 15*time.Second); err != nil {
		failf("[group] topic %s: %v", topic, err)
		return
	}

	msgs := make([]kafka.Message, groupRecords)
	index := map[string]int{}
	wantPart := make([]int, groupRecords)
	perPartition := make([]int, groupPartitions)
	for i := range msgs {
		msgs[i] = kafka.Message{
			Key:   []byte(fmt.Sprintf("group-%05d", i)),
			Value: []byte(fmt.Sprintf("group-value-%05d-%s", i, runID)),
		}
		index[string(msgs[i].Key)] = i
		wantPart[i] = hashPartition(msgs[i].Key, groupPartitions)
		perPartition[wantPart[i]]++
	}
	for p, c := range perPartition {
		if c == 0 { // a property of the keys, not of the broker
			failf("[group] test bug: no key of the first %d hashes to partition %d", groupRecords, p)
			return
		}
	}

	// 2. Two readers in one group. They join (and start fetching) before any
	// record exists, and the records are written only once the group has
	// settled: so no record is fetched under a superseded assignment, and a
	// partition read by both readers, a duplicate or a rebalance after settling
	// is a failure. (Were records fetched during a rebalance, kafka-go 0.2 could
	// deliver them twice: a revoked partition's buffered messages stay readable
	// until the new generation's partition readers start, while the new owner
	// already reads from the last committed offset.)
	a := &memberTracker{name: "A", verbose: verbose}
	b := &memberTracker{name: "B", verbose: verbose}
	trackers = append(trackers, a, b)
	ra := newGroupReader(brokers, topic, groupID, a)
	rb := newGroupReader(brokers, topic, groupID, b)
	closed := false
	closeAB := func() {
		if closed {
			return
		}
		closed = true
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); closeReader("A", ra, 15*time.Second) }()
		go func() { defer wg.Done(); closeReader("B", rb, 15*time.Second) }()
		wg.Wait()
	}
	defer closeAB()

	events := make(chan groupEvent, 2*groupRecords+100)
	cctx, stopConsumers := context.WithCancel(context.Background())
	resA, resB := &consumerResult{}, &consumerResult{}
	var consumers sync.WaitGroup
	consumers.Add(2)
	go func() { defer consumers.Done(); consumeAndCommit(cctx, "A", ra, events, resA) }()
	go func() { defer consumers.Done(); consumeAndCommit(cctx, "B", rb, events, resB) }()
	consumersStopped, consumersDone := false, false
	stopAndWait := func() {
		if consumersStopped {
			return
		}
		consumersStopped = true
		stopConsumers()
		done := make(chan struct{})
		go func() { consumers.Wait(); close(done) }()
		select {
		case <-done:
			consumersDone = true // resA and resB may be read now
		case <-time.After(20 * time.Second):
			failf("[group] consumers did not stop (final commits) within 20 s")
		}
	}
	defer stopAndWait()

	settleStart := time.Now()
	var owner map[int]string
	var settledGen int32
	for {
		var why string
		owner, settledGen, why = settledAssignment(groupPartitions, []*memberTracker{a, b})
		if owner != nil {
			break
		}
		if time.Since(settleStart) > 25*time.Second {
			failf("[group] the two readers' group did not settle within 25 s: %s", why)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	settledA, settledB := a.state(), b.state()
	fmt.Printf("    group settled in %v at generation %d: A %v, B %v\n",
		time.Since(settleStart).Round(time.Millisecond), settledGen, settledA.parts, settledB.parts)

	if err := writeGroupRecords(brokers, topic, msgs); err != nil {
		failf("[group] WriteMessages of %d records: %v", groupRecords, err)
		return
	}

	var bad issues
	seenBy := map[string]string{}                        // key -> reader that got it first
	readersOf := make([]map[string]int, groupPartitions) // partition -> reader -> records
	got := map[string]int{}                              // reader -> records (with duplicates)
	end := make([]int64, groupPartitions)                // partition -> last offset seen + 1
	for p := range readersOf {
		readersOf[p] = map[string]int{}
	}
	check := func(ev groupEvent) {
		m := ev.msg
		got[ev.reader]++
		key := string(m.Key)
		i, ok := index[key]
		if !ok {
			bad.add("unexpected record", "reader %s got key %q at p%d@%d", ev.reader, m.Key, m.Partition, m.Offset)
			return
		}
		if m.Topic != topic || m.Partition < 0 || m.Partition >= groupPartitions {
			bad.add("record from an unexpected topic/partition", "reader %s got %s from %s/%d", ev.reader, key, m.Topic, m.Partition)
			return
		}
		if m.Partition != wantPart[i] {
			bad.add("record on the wrong partition", "%s is on partition %d, its key hashes to %d", key, m.Partition, wantPart[i])
		}
		if !bytes.Equal(m.Value, msgs[i].Value) {
			bad.add("wrong value", "%s: got %q want %q", key, m.Value, msgs[i].Value)
		}
		if first, dup := seenBy[key]; dup {
			bad.add("duplicate record", "%s (p%d@%d) got by %s and again by %s", key, m.Partition, m.Offset, first, ev.reader)
		} else {
			seenBy[key] = ev.reader
		}
		readersOf[m.Partition][ev.reader]++
		if m.Offset+1 > end[m.Partition] {
			end[m.Partition] = m.Offset + 1
		}
	}
	consumeStart := time.Now()
	timeout := time.After(25 * time.Second)
collect:
	for len(seenBy) < groupRecords {
		select {
		case ev := <-events:
			check(ev)
		case <-timeout:
			failf("[group] only %d of %d records consumed within 25 s (A got %d, B got %d; A: %v; B: %v)",
				len(seenBy), groupRecords, got["A"], got["B"], a.state(), b.state())
			break collect
		}
	}
	consumeTime := time.Since(consumeStart)
	// Anything arriving in the next second is a duplicate or a stray.
	grace := time.After(time.Second)
drain:
	for {
		select {
		case ev := <-events:
			check(ev)
		case <-grace:
			break drain
		}
	}
	stopAndWait()
leftover:
	for {
		select {
		case ev := <-events:
			check(ev)
		default:
			break leftover
		}
	}
	bad.report("[group]")
	for p := 0; p < groupPartitions; p++ {
		var names []string
		for name := range readersOf[p] {
			names = append(names, name)
		}
		sort.Strings(names)
		switch {
		case len(names) > 1:
			failf("[group] partition %d was consumed by %v (records %v); each partition must be consumed by one reader (settled assignment: %s)",
				p, names, readersOf[p], owner[p])
		case len(names) == 1 && names[0] != owner[p]:
			failf("[group] partition %d was consumed by %s, but the settled assignment gave it to %s", p, names[0], owner[p])
		}
		if int(end[p]) != perPartition[p] && len(seenBy) == groupRecords {
			failf("[group] partition %d: last offset consumed %d, want %d (the topic is new: offsets 0..%d)",
				p, end[p]-1, perPartition[p]-1, perPartition[p]-1)
		}
	}
	for _, m := range []struct {
		t       *memberTracker
		settled memberState
		res     *consumerResult
	}{{a, settledA, resA}, {b, settledB, resB}} {
		if s := m.t.state(); s.joins != m.settled.joins || s.gen != m.settled.gen || s.subGen != m.settled.subGen {
			failf("[group] reader %s rebalanced after the group had settled: was %v, now %v", m.t.name, m.settled, s)
		}
		if !consumersDone {
			continue
		}
		if n := len(m.res.fetchErrs); n > 0 {
			failf("[group] reader %s: %d FetchMessage error(s), first: %s", m.t.name, n, m.res.fetchErrs[0])
		}
		if n := len(m.res.commitErrs); n > 0 {
			failf("[group] reader %s: %d CommitMessages error(s), first: %s", m.t.name, n, m.res.commitErrs[0])
		}
	}
	countA, countB := 0, 0
	for _, r := range seenBy {
		if r == "A" {
			countA++
		} else {
			countB++
		}
	}
	if consumersDone {
		fmt.Printf("    %d records consumed in %v: A %d, B %d; CommitMessages calls: A %d, B %d\n",
			len(seenBy), consumeTime.Round(time.Millisecond), countA, countB, resA.commits, resB.commits)
	}
	if len(seenBy) < groupRecords || !consumersDone {
		return // step 3 would only repeat the failure
	}

	// 3. Close both, write more, resume with one new reader in the same group.
	closeStart := time.Now()
	closeAB()
	fmt.Printf("    closed both readers in %v\n", time.Since(closeStart).Round(time.Millisecond))

	late := make([]kafka.Message, groupLate)
	lateIndex := map[string]int{}
	for i := range late {
		late[i] = kafka.Message{
			Key:   []byte(fmt.Sprintf("late-%05d", i)),
			Value: []byte(fmt.Sprintf("late-value-%05d-%s", i, runID)),
		}
		lateIndex[string(late[i].Key)] = i
	}
	if err := writeGroupRecords(brokers, topic, late); err != nil {
		failf("[group] WriteMessages of %d more records: %v", groupLate, err)
		return
	}

	c := &memberTracker{name: "C", verbose: verbose}
	trackers = append(trackers, c)
	rc := newGroupReader(brokers, topic, groupID, c)
	defer closeReader("C", rc, 15*time.Second)
	var badC issues
	gotLate := map[string]bool{}
	resumeStart := time.Now()
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	readErrs := 0
	// ReadMessage = FetchMessage + CommitMessages (synchronous) with a GroupID.
	for n := 0; n < groupLate; {
		m, err := rc.ReadMessage(rctx)
		if err != nil {
			if rctx.Err() != nil {
				failf("[group] resumed reader got only %d of the %d new records within 30 s (%v)", len(gotLate), groupLate, c.state())
				break
			}
			readErrs++
			if readErrs <= 3 {
				failf("[group] resumed reader: ReadMessage: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		n++
		key := string(m.Key)
		if i, old := index[key]; old {
			badC.add("re-read an already committed record", "%s at p%d@%d (the first %d records end at offset %d there): it did not resume from the committed offset",
				msgs[i].Key, m.Partition, m.Offset, groupRecords, end[m.Partition])
			continue
		}
		i, ok := lateIndex[key]
		if !ok {
			badC.add("unexpected record", "key %q at p%d@%d", m.Key, m.Partition, m.Offset)
			continue
		}
		if m.Partition < 0 || m.Partition >= groupPartitions {
			badC.add("record from an unexpected partition", "%s from partition %d", key, m.Partition)
			continue
		}
		if want := hashPartition(m.Key, groupPartitions); m.Partition != want {
			badC.add("record on the wrong partition", "%s is on partition %d, its key hashes to %d", key, m.Partition, want)
		}
		if m.Offset < end[m.Partition] {
			badC.add("record below the committed offset", "%s at p%d@%d, the committed offset is %d", key, m.Partition, m.Offset, end[m.Partition])
		}
		if !bytes.Equal(m.Value, late[i].Value) {
			badC.add("wrong value", "%s: got %q want %q", key, m.Value, late[i].Value)
		}
		if gotLate[key] {
			badC.add("duplicate record", "%s at p%d@%d", key, m.Partition, m.Offset)
		}
		gotLate[key] = true
	}
	resumeTime := time.Since(resumeStart)
	// Nothing may follow the new records (FetchMessage: no commit needed).
	if len(gotLate) == groupLate {
		ectx, ecancel := context.WithTimeout(context.Background(), time.Second)
		if m, err := rc.FetchMessage(ectx); err == nil {
			badC.add("record after the new ones", "key %q at p%d@%d", m.Key, m.Partition, m.Offset)
		}
		ecancel()
	}
	badC.report("[group] resumed reader:")
	fmt.Printf("    resumed reader got %d of the %d new records in %v (%v); group check took %v\n",
		len(gotLate), groupLate, resumeTime.Round(time.Millisecond), c.state(), time.Since(t0).Round(time.Millisecond))
}
