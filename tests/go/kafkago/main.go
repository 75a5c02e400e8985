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
// The consumer-group checks (after the codec checks; -group=false skips them)
// each use a fresh 6-partition topic, created with kafka-go's Conn.CreateTopics
// (Metadata v1 must then show 6 partitions with leaders), and a fresh group.
// Readers join (and start fetching) before any record exists; records are
// written only once the group has settled: every reader subscribed in the same
// generation to a disjoint, non-empty partition set, together covering all 6
// (kafka-go 0.2 has no assignment callback, so this is read from its Logger
// output). Records are keyed and written with the Hash balancer (FNV-1a, like
// Sarama), so the partition of every key is known in advance. For every batch
// consumed it is checked: every record seen, on the partition its key hashes
// to, with its value, at the expected offsets; no duplicates; each partition
// read by exactly one reader, the one the settled assignment gave it to; no
// rebalance after settling; no fetch or commit errors.
//
// First check, two readers:
//  1. Two readers A and B (FetchMessage, synchronous CommitMessages in
//     batches) settle, then 600 records are written and consumed.
//  2. Close both, write 60 more records, start one new reader C in the same
//     group (ReadMessage, i.e. kafka-go's commit-on-read) and check that the
//     first 60 records it gets are exactly the 60 new ones, at offsets past the
//     first 600 (it resumed from the committed offsets), and that nothing else
//     follows.
//
// Second check, three readers and a hand-over:
//  1. Three readers settle (each gets at least one partition), then 600
//     records are written and consumed. A and B commit synchronously
//     (FetchMessage + CommitMessages); C uses kafka-go's interval commits
//     (CommitInterval > 0 with ReadMessage, which then only queues the offset;
//     kafka-go 0.2 flushes the queue on its heartbeat tick).
//  2. The group's committed offsets, read with a raw OffsetFetch v1 request
//     from the coordinator (FindCoordinator v0), must reach every partition's
//     end offset within 10 s: this waits for C's flush, so the hand-over starts
//     from fully committed offsets.
//  3. Close A while B and C keep consuming: B and C must settle in a new
//     generation on all 6 partitions within 15 s of A's Close (the time is
//     printed). Then 60 more records are written; B and C must get exactly
//     those, each partition from its new owner, none of the first 600 again.
//  4. Once the new offsets are committed, B and C are closed; every
//     partition's committed offset (OffsetFetch v1) must then equal its end
//     offset, both as written and as ListOffsets v1 (Conn.ReadLastOffset on the
//     partition leader) reports it.
//
// kafka-go 0.2.1's Reader.Close never sends LeaveGroup (it dials the
// coordinator with its already cancelled context), so a closed reader leaves
// its group only when its session expires: hence SessionTimeout 6 s (Kafka's
// group.min.session.timeout.ms default). In the first check the broker lets C
// in once A's and B's sessions expire; in the second, the hand-over starts when
// A's does, and B and C learn of it from a failed Heartbeat (every 500 ms).
// Every wait has a deadline; on a healthy broker the first check takes ~12 s
// and the second ~15 s.
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
	group := flag.Bool("group", true, "run the consumer-group checks after the codec checks")
	defaultRF := 1
	if v, err := strconv.Atoi(os.Getenv("SLUICE_REPLICATION_FACTOR")); err == nil && v > 0 {
		defaultRF = v
	}
	rf := flag.Int("replication-factor", defaultRF, "replication factor of the group checks' topics (default $SLUICE_REPLICATION_FACTOR or 1)")
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
		if missing := missingVersions(versions, groupNeeds); len(missing) > 0 {
			failf("[group] broker does not advertise the group request versions kafka-go 0.2 sends: %s", strings.Join(missing, ", "))
		} else {
			runGroupCheck(brokers, runID, *rf, *verbose)
			runThreeReaderCheck(brokers, runID, *rf, *verbose)
		}
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
	groupBatch      = 50 // records per CommitMessages call of a synchronous committer
	// HeartbeatInterval of every group reader: a member learns of a rebalance
	// only from a failed Heartbeat, and kafka-go 0.2 flushes interval commits on
	// this ticker too (not on CommitInterval's).
	groupHeartbeat = 500 * time.Millisecond
	// SessionTimeout of every group reader: Kafka's (and Sluice's)
	// group.min.session.timeout.ms. A closed kafka-go 0.2 reader leaves its group
	// only when this expires (see the top comment).
	groupSession = 6 * time.Second
	// CommitInterval of the three-reader check's interval committer.
	groupCommitInterval = 200 * time.Millisecond
)

// What kafka-go 0.2's Reader sends for a consumer group (conn.go), each at one
// fixed version. LeaveGroup is only sent on error paths (see the top comment).
// The checks also send FindCoordinator v0 and OffsetFetch v1 themselves.
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

// recordSet is n keyed records for a groupPartitions-partition topic, keys
// "PREFIX-NNNNN" and values "PREFIX-value-NNNNN-RUNID", with the partition the
// Hash balancer puts each on.
type recordSet struct {
	msgs         []kafka.Message
	index        map[string]int // key -> position in msgs
	part         []int          // position -> partition its key hashes to
	perPartition []int          // partition -> records
}

func newRecordSet(prefix, runID string, n int) *recordSet {
	s := &recordSet{
		msgs:         make([]kafka.Message, n),
		index:        map[string]int{},
		part:         make([]int, n),
		perPartition: make([]int, groupPartitions),
	}
	for i := range s.msgs {
		s.msgs[i] = kafka.Message{
			Key:   []byte(fmt.Sprintf("%s-%05d", prefix, i)),
			Value: []byte(fmt.Sprintf("%s-value-%05d-%s", prefix, i, runID)),
		}
		s.index[string(s.msgs[i].Key)] = i
		s.part[i] = hashPartition(s.msgs[i].Key, groupPartitions)
		s.perPartition[s.part[i]]++
	}
	return s
}

// coversAll reports a partition none of the keys hashes to: a property of the
// keys (a test bug), not of the broker.
func (s *recordSet) coversAll() error {
	for p, c := range s.perPartition {
		if c == 0 {
			return fmt.Errorf("test bug: no key of the %d records hashes to partition %d", len(s.msgs), p)
		}
	}
	return nil
}

// endOffsets is partition -> end offset once sets were written, in order, to a
// new topic.
func endOffsets(sets ...*recordSet) []int64 {
	end := make([]int64, groupPartitions)
	for _, s := range sets {
		for p, c := range s.perPartition {
			end[p] += int64(c)
		}
	}
	return end
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
// readers start (nothing for an empty assignment), and "rebalancing consumer
// group" when a handshake begins (the previous partition readers have been
// stopped by then). Its commits: "committed offsets: map[...]" after each
// successful OffsetCommit, and (ErrorLogger, interval commits only) "unable to
// commit offsets ..." when one failed after its retries.
type memberTracker struct {
	name    string
	verbose bool

	mu         sync.Mutex
	gen        int32 // generation of the last successful JoinGroup
	memberID   string
	joins      int   // successful JoinGroups
	subGen     int32 // generation of the current subscription, 0 while rebalancing
	parts      []int // partitions of the current subscription
	commits    int   // successful OffsetCommits
	commitErrs int   // failed interval commits
	commitErr  string
	tail       []string
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
	// Idle partition readers log "no messages received ..." every MaxWait: keep
	// them out of the tail dumped on failure.
	if !strings.Contains(line, "no messages received") {
		if len(t.tail) >= 60 {
			t.tail = t.tail[1:]
		}
		t.tail = append(t.tail, line)
	}
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
	case strings.Contains(line, "committed offsets: map["):
		t.commits++
	case strings.Contains(line, "unable to commit offsets"):
		if t.commitErrs == 0 {
			t.commitErr = line
		}
		t.commitErrs++
	}
	return len(p), nil
}

func (t *memberTracker) state() memberState {
	t.mu.Lock()
	defer t.mu.Unlock()
	return memberState{gen: t.gen, subGen: t.subGen, memberID: t.memberID, joins: t.joins,
		parts: append([]int(nil), t.parts...)}
}

// commitLog returns the successful OffsetCommits kafka-go logged, the failed
// interval commits and the first failure.
func (t *memberTracker) commitLog() (commits, errs int, first string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.commits, t.commitErrs, t.commitErr
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
// subscribed in its latest generation, all in the same one, to disjoint
// non-empty sets covering partitions 0..n-1; else why not.
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
			return nil, 0, all + " (kafka-go logs no subscription for an empty assignment)"
		}
		if gen == -1 {
			gen = s.subGen
		} else if s.subGen != gen {
			return nil, 0, all
		}
		if len(s.parts) == 0 {
			return nil, 0, fmt.Sprintf("%s has no partition in generation %d (%s)", m.name, gen, all)
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

// newGroupReader returns a group reader logging to t. With commitInterval 0,
// CommitMessages (and ReadMessage's commit) waits for the OffsetCommit
// response; with commitInterval > 0 it only queues the offsets, and kafka-go 0.2
// commits the queue on its heartbeat ticker (so every groupHeartbeat, whatever
// the interval) and can drop commits still queued when Close is called.
func newGroupReader(brokers []string, topic, group string, t *memberTracker, commitInterval time.Duration) *kafka.Reader {
	logger := log.New(t, "", log.Lmicroseconds)
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers: brokers,
		GroupID: group,
		Topic:   topic,
		// Partition must stay 0 with a GroupID (NewReader panics otherwise).
		MinBytes:          1, // the default is MaxBytes: every fetch would wait MaxWait
		MaxBytes:          10 << 20,
		MaxWait:           500 * time.Millisecond, // also bounds how long a rebalance waits for the partition readers to stop
		HeartbeatInterval: groupHeartbeat,
		SessionTimeout:    groupSession,
		RebalanceTimeout:  10 * time.Second,
		CommitInterval:    commitInterval,
		Logger:            logger,
		ErrorLogger:       logger,
	})
}

// closeReader closes r, failing (and giving up on it) if that takes longer than d:
// kafka-go 0.2's coordinator connection has no deadlines, so Close waits for an
// unanswered Heartbeat/JoinGroup forever.
func closeReader(label, name string, r *kafka.Reader, d time.Duration) {
	done := make(chan struct{})
	go func() {
		_ = r.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		failf("%s closing reader %s did not finish within %v", label, name, d)
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

// setupGroupTopic creates topic and waits for its partitions' leaders.
func setupGroupTopic(label string, brokers []string, topic string, rf int) bool {
	if err := createGroupTopic(brokers, topic, rf); err != nil {
		failf("%s creating topic %s with %d partitions: %v", label, topic, groupPartitions, err)
		return false
	}
	if err := waitPartitions(brokers[0], topic, groupPartitions, 15*time.Second); err != nil {
		failf("%s topic %s: %v", label, topic, err)
		return false
	}
	return true
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

// ------------------------------------------------------- raw group requests

// putString appends a Kafka (int16-length) string.
func putString(b *bytes.Buffer, s string) {
	_ = binary.Write(b, binary.BigEndian, int16(len(s)))
	b.WriteString(s)
}

// wireReader decodes a response body; the first error sticks (and later reads
// return zeros).
type wireReader struct {
	b   []byte
	err error
}

func (r *wireReader) next(n int) []byte {
	if r.err == nil && n > len(r.b) {
		r.err = fmt.Errorf("response truncated (%d more bytes wanted, %d left)", n, len(r.b))
	}
	if r.err != nil {
		return make([]byte, n)
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *wireReader) int16() int16 { return int16(binary.BigEndian.Uint16(r.next(2))) }
func (r *wireReader) int32() int32 { return int32(binary.BigEndian.Uint32(r.next(4))) }
func (r *wireReader) int64() int64 { return int64(binary.BigEndian.Uint64(r.next(8))) }

// string reads a (nullable) string; null reads as "".
func (r *wireReader) string() string {
	n := r.int16()
	if n < 0 {
		return ""
	}
	return string(r.next(int(n)))
}

// groupCoordinator asks broker for group's coordinator (FindCoordinator v0).
func groupCoordinator(broker, group string) (string, error) {
	var body bytes.Buffer
	putString(&body, group)
	resp, err := rawRequest(broker, 10, 0, body.Bytes(), 10*time.Second)
	if err != nil {
		return "", fmt.Errorf("FindCoordinator v0: %v", err)
	}
	r := wireReader{b: resp}
	code := r.int16()
	_ = r.int32() // node id
	host := r.string()
	port := r.int32()
	if r.err != nil {
		return "", fmt.Errorf("FindCoordinator v0: %v", r.err)
	}
	if code != 0 {
		return "", fmt.Errorf("FindCoordinator v0: error code %d", code)
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port))), nil
}

// committedOffsets returns group's committed offsets of topic's partitions
// 0..groupPartitions-1 (-1: none) by a raw OffsetFetch v1 request to the
// group's coordinator. v1: group_id, [topic, [partition]] -> [topic,
// [partition, offset int64, metadata nullable string, error_code int16]].
func committedOffsets(broker, group, topic string) ([]int64, error) {
	coordinator, err := groupCoordinator(broker, group)
	if err != nil {
		return nil, err
	}
	var body bytes.Buffer
	putString(&body, group)
	_ = binary.Write(&body, binary.BigEndian, int32(1))
	putString(&body, topic)
	_ = binary.Write(&body, binary.BigEndian, int32(groupPartitions))
	for p := int32(0); p < groupPartitions; p++ {
		_ = binary.Write(&body, binary.BigEndian, p)
	}
	resp, err := rawRequest(coordinator, 9, 1, body.Bytes(), 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("OffsetFetch v1 to %s: %v", coordinator, err)
	}
	r := wireReader{b: resp}
	offsets := make([]int64, groupPartitions)
	answered := make([]bool, groupPartitions)
	var problems []string
	for t, nt := int32(0), r.int32(); t < nt && r.err == nil; t++ {
		name := r.string()
		for i, np := int32(0), r.int32(); i < np && r.err == nil; i++ {
			p, offset := r.int32(), r.int64()
			_ = r.string() // metadata
			code := r.int16()
			switch {
			case r.err != nil:
			case name != topic || p < 0 || p >= groupPartitions:
				problems = append(problems, fmt.Sprintf("unasked-for %s/%d", name, p))
			case answered[p]:
				problems = append(problems, fmt.Sprintf("partition %d answered twice", p))
			case code != 0:
				problems = append(problems, fmt.Sprintf("partition %d: error code %d", p, code))
			default:
				offsets[p], answered[p] = offset, true
			}
		}
	}
	if r.err == nil && len(r.b) > 0 {
		r.err = fmt.Errorf("%d bytes after the v1 response", len(r.b))
	}
	if r.err != nil {
		return nil, fmt.Errorf("OffsetFetch v1 response: %v", r.err)
	}
	for p, ok := range answered {
		if !ok {
			problems = append(problems, fmt.Sprintf("no answer for partition %d", p))
		}
	}
	if len(problems) > 0 {
		return offsets, fmt.Errorf("OffsetFetch v1: %s", strings.Join(problems, "; "))
	}
	return offsets, nil
}

// waitCommitted polls committedOffsets (≤ d) until they equal want.
func waitCommitted(broker, group, topic string, want []int64, d time.Duration) error {
	start := time.Now()
	for {
		got, err := committedOffsets(broker, group, topic)
		if err == nil && fmt.Sprint(got) == fmt.Sprint(want) {
			return nil
		}
		if time.Since(start) > d {
			return fmt.Errorf("after %v the committed offsets are %v, want %v (last error: %v)", d, got, want, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// endOffsetsOf asks each partition's leader for its end offset (ListOffsets v1,
// kafka-go's Conn.ReadLastOffset).
func endOffsetsOf(broker, topic string) ([]int64, error) {
	ends := make([]int64, groupPartitions)
	for p := range ends {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := kafka.DialLeader(ctx, "tcp", broker, topic, p)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("partition %d: dialing its leader: %v", p, err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		ends[p], err = conn.ReadLastOffset()
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("partition %d: ListOffsets v1: %v", p, err)
		}
	}
	return ends, nil
}

// ------------------------------------------------------------ group members

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

// groupMember is one group reader, its memberTracker and the goroutine
// consuming from it.
type groupMember struct {
	name     string
	t        *memberTracker
	r        *kafka.Reader
	interval bool        // CommitInterval > 0: consumed with ReadMessage, see consumeReadMessage
	settled  memberState // when waitSettled last saw the group settle

	res      consumerResult
	cancel   context.CancelFunc
	done     chan struct{}
	stopped  bool // stopConsumers was called
	finished bool // the consumer goroutine ended: res may be read
	closed   bool
}

func newGroupMember(brokers []string, topic, group, name string, commitInterval time.Duration, verbose bool) *groupMember {
	t := &memberTracker{name: name, verbose: verbose}
	return &groupMember{name: name, t: t, r: newGroupReader(brokers, topic, group, t, commitInterval), interval: commitInterval > 0}
}

// readCall is what the member's consumer reads with.
func (m *groupMember) readCall() string {
	if m.interval {
		return "ReadMessage"
	}
	return "FetchMessage"
}

// consume starts the member's consumer goroutine, reporting every message on out.
func (m *groupMember) consume(out chan<- groupEvent) {
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel, m.done = cancel, make(chan struct{})
	go func() {
		defer close(m.done)
		if m.interval {
			consumeReadMessage(ctx, m.name, m.r, out, &m.res)
		} else {
			consumeAndCommit(ctx, m.name, m.r, out, &m.res)
		}
	}()
}

// stopConsumers stops the consumer goroutines of ms and waits (≤ 20 s in all)
// for them to end, a synchronous committer after its last CommitMessages.
func stopConsumers(label string, ms ...*groupMember) {
	var waiting []*groupMember
	for _, m := range ms {
		if m.done != nil && !m.stopped {
			m.stopped = true
			m.cancel()
			waiting = append(waiting, m)
		}
	}
	timer := time.NewTimer(20 * time.Second)
	defer timer.Stop()
	expired := false
	for _, m := range waiting {
		if !expired {
			select {
			case <-m.done:
				m.finished = true
				continue
			case <-timer.C:
				expired = true
			}
		}
		select {
		case <-m.done:
			m.finished = true
		default:
			failf("%s the consumer of reader %s did not stop (final commits) within 20 s", label, m.name)
		}
	}
}

// closeMembers closes the readers of ms concurrently (each at most once).
func closeMembers(label string, ms ...*groupMember) {
	var wg sync.WaitGroup
	for _, m := range ms {
		if m.closed {
			continue
		}
		m.closed = true
		wg.Add(1)
		go func(m *groupMember) {
			defer wg.Done()
			closeReader(label, m.name, m.r, 15*time.Second)
		}(m)
	}
	wg.Wait()
}

func memberNames(ms []*groupMember) string {
	var names []string
	for _, m := range ms {
		names = append(names, m.name)
	}
	return strings.Join(names, ", ")
}

// dumpIfFailed dumps the kafka-go log tails of *ms if a check failed since
// failures was at before (defer dumpIfFailed(failures, &members)).
func dumpIfFailed(before int, ms *[]*groupMember) {
	if failures > before {
		for _, m := range *ms {
			m.t.dump()
		}
	}
}

// waitSettled waits (≤ d) until ms have settled (settledAssignment) in a
// generation after `after`, records each member's settled state and returns
// partition -> member name and the generation.
func waitSettled(label string, ms []*groupMember, after int32, d time.Duration) (map[int]string, int32, bool) {
	trackers := make([]*memberTracker, len(ms))
	for i, m := range ms {
		trackers[i] = m.t
	}
	start := time.Now()
	for {
		owner, gen, why := settledAssignment(groupPartitions, trackers)
		if owner != nil && gen > after {
			for _, m := range ms {
				m.settled = m.t.state()
			}
			return owner, gen, true
		}
		if owner != nil {
			why = fmt.Sprintf("still settled in generation %d, want a later one", gen)
		}
		if time.Since(start) > d {
			failf("%s readers %s did not settle within %v: %s", label, memberNames(ms), d, why)
			return nil, 0, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// assignmentString is "A [0 1], B [2 3]" from the members' settled states.
func assignmentString(ms []*groupMember) string {
	var parts []string
	for _, m := range ms {
		parts = append(parts, fmt.Sprintf("%s %v", m.name, m.settled.parts))
	}
	return strings.Join(parts, ", ")
}

// checkSettled fails for each member that rebalanced since waitSettled last saw
// the group settle.
func checkSettled(label string, ms []*groupMember) {
	for _, m := range ms {
		if s := m.t.state(); s.joins != m.settled.joins || s.gen != m.settled.gen || s.subGen != m.settled.subGen {
			failf("%s reader %s rebalanced after the group had settled: was %v, now %v", label, m.name, m.settled, s)
		}
	}
}

// checkErrors fails for the read and commit errors of ms: those their consumers
// saw (once they ended) and the interval commits kafka-go logged as failed.
func checkErrors(label string, ms []*groupMember) {
	for _, m := range ms {
		if _, n, first := m.t.commitLog(); n > 0 {
			failf("%s reader %s: kafka-go logged %d failed interval commit(s), first: %s", label, m.name, n, first)
		}
		if !m.finished {
			continue
		}
		if n := len(m.res.fetchErrs); n > 0 {
			failf("%s reader %s: %d %s error(s), first: %s", label, m.name, n, m.readCall(), m.res.fetchErrs[0])
		}
		if n := len(m.res.commitErrs); n > 0 {
			failf("%s reader %s: %d CommitMessages error(s), first: %s", label, m.name, n, m.res.commitErrs[0])
		}
	}
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

// consumeReadMessage reads from r with ReadMessage until ctx ends, reporting
// every message on out. For a reader with CommitInterval > 0, ReadMessage only
// queues the message's offset for kafka-go's interval committer (an error there
// loses the message, and is a read error here).
func consumeReadMessage(ctx context.Context, name string, r *kafka.Reader, out chan<- groupEvent, res *consumerResult) {
	for ctx.Err() == nil {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			res.fetchErrs = append(res.fetchErrs, err.Error())
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		res.fetched++
		select {
		case out <- groupEvent{reader: name, msg: m}:
		case <-ctx.Done():
			return
		}
	}
}

// ------------------------------------------------------------ consumption

// consumption checks what group readers consumed against the records written:
// want is what they should get, old (or nil) what was written and committed
// before it, so offsets of want start past old's, and getting an old record
// again is a re-read.
type consumption struct {
	label       string
	topic       string
	want, old   *recordSet
	from        []int64           // partition -> first offset of want's records
	seenBy      map[string]string // key -> reader that got it first
	readersOf   []map[string]int  // partition -> reader -> records
	got         map[string]int    // reader -> records (with duplicates)
	end         []int64           // partition -> last offset seen + 1
	completedAt time.Time         // when the last wanted record arrived
	bad         issues
}

// settleThenConsume waits for the members to settle, then writes the records
// (only then, so no rebalance can explain a duplicate) and collects them from
// events. Returns the settled owners, generation, when the write started and
// the consumption; false if the group did not settle or the write failed.
func settleThenConsume(label, what string, brokers []string, topic string, rs *recordSet,
	events chan groupEvent, members []*groupMember) (map[int]string, int32, time.Time, *consumption, bool) {
	settleStart := time.Now()
	owner, gen, ok := waitSettled(label, members, 0, 25*time.Second)
	if !ok {
		return nil, 0, time.Time{}, nil, false
	}
	fmt.Printf("    %s settled in %v at generation %d: %s\n",
		what, time.Since(settleStart).Round(time.Millisecond), gen, assignmentString(members))
	writeStart := time.Now()
	if err := writeGroupRecords(brokers, topic, rs.msgs); err != nil {
		failf("%s WriteMessages of %d records: %v", label, len(rs.msgs), err)
		return nil, 0, time.Time{}, nil, false
	}
	consumed := newConsumption(label, topic, rs, nil)
	consumed.collect(events, 25*time.Second, members)
	return owner, gen, writeStart, consumed, true
}

func newConsumption(label, topic string, want, old *recordSet) *consumption {
	c := &consumption{label: label, topic: topic, want: want, old: old, from: make([]int64, groupPartitions),
		seenBy: map[string]string{}, readersOf: make([]map[string]int, groupPartitions), got: map[string]int{},
		end: make([]int64, groupPartitions)}
	if old != nil {
		c.from = endOffsets(old)
	}
	for p := range c.readersOf {
		c.readersOf[p] = map[string]int{}
	}
	return c
}

func (c *consumption) complete() bool { return len(c.seenBy) == len(c.want.msgs) }

func (c *consumption) check(ev groupEvent) {
	m := ev.msg
	c.got[ev.reader]++
	key := string(m.Key)
	if m.Topic != c.topic || m.Partition < 0 || m.Partition >= groupPartitions {
		c.bad.add("record from an unexpected topic/partition", "reader %s got %s from %s/%d", ev.reader, key, m.Topic, m.Partition)
		return
	}
	if c.old != nil {
		if _, old := c.old.index[key]; old {
			c.bad.add("re-read an already committed record", "reader %s got %s at p%d@%d (offsets below %d there were consumed and committed before)",
				ev.reader, key, m.Partition, m.Offset, c.from[m.Partition])
			return
		}
	}
	i, ok := c.want.index[key]
	if !ok {
		c.bad.add("unexpected record", "reader %s got key %q at p%d@%d", ev.reader, m.Key, m.Partition, m.Offset)
		return
	}
	if m.Partition != c.want.part[i] {
		c.bad.add("record on the wrong partition", "%s is on partition %d, its key hashes to %d", key, m.Partition, c.want.part[i])
	}
	if m.Offset < c.from[m.Partition] {
		c.bad.add("record below the committed offset", "%s at p%d@%d, the committed offset is %d", key, m.Partition, m.Offset, c.from[m.Partition])
	}
	if !bytes.Equal(m.Value, c.want.msgs[i].Value) {
		c.bad.add("wrong value", "%s: got %q want %q", key, m.Value, c.want.msgs[i].Value)
	}
	if first, dup := c.seenBy[key]; dup {
		c.bad.add("duplicate record", "%s (p%d@%d) got by %s and again by %s", key, m.Partition, m.Offset, first, ev.reader)
	} else {
		c.seenBy[key] = ev.reader
		if c.complete() {
			c.completedAt = time.Now()
		}
	}
	c.readersOf[m.Partition][ev.reader]++
	if m.Offset+1 > c.end[m.Partition] {
		c.end[m.Partition] = m.Offset + 1
	}
}

// collect checks events until every wanted record arrived (completedAt) or d
// passed.
func (c *consumption) collect(events <-chan groupEvent, d time.Duration, ms []*groupMember) {
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for !c.complete() {
		select {
		case ev := <-events:
			c.check(ev)
		case <-timeout.C:
			var got []string
			for _, m := range ms {
				got = append(got, fmt.Sprintf("%s got %d: %v", m.name, c.got[m.name], m.t.state()))
			}
			failf("%s only %d of %d records consumed within %v (%s)", c.label, len(c.seenBy), len(c.want.msgs), d, strings.Join(got, "; "))
			return
		}
	}
}

// watch checks the events arriving for d, then those still queued. Once every
// wanted record arrived, anything more is a duplicate or a stray.
func (c *consumption) watch(events <-chan groupEvent, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case ev := <-events:
			c.check(ev)
		case <-timer.C:
			for {
				select {
				case ev := <-events:
					c.check(ev)
				default:
					return
				}
			}
		}
	}
}

// firstSeen is reader -> records it was the first to get.
func (c *consumption) firstSeen() map[string]int {
	n := map[string]int{}
	for _, r := range c.seenBy {
		n[r]++
	}
	return n
}

// report fails for the record problems found and, if owner is not nil, for a
// partition consumed by more than one reader or not by its owner; once all
// wanted records arrived, for a partition whose last offset is not the last of
// want's records there.
func (c *consumption) report(owner map[int]string) {
	c.bad.report(c.label)
	for p := 0; p < groupPartitions; p++ {
		var names []string
		for name := range c.readersOf[p] {
			names = append(names, name)
		}
		sort.Strings(names)
		switch {
		case owner == nil:
		case len(names) > 1:
			failf("%s partition %d was consumed by %v (records %v); each partition must be consumed by one reader (settled assignment: %s)",
				c.label, p, names, c.readersOf[p], owner[p])
		case len(names) == 1 && names[0] != owner[p]:
			failf("%s partition %d was consumed by %s, but the settled assignment gave it to %s", c.label, p, names[0], owner[p])
		}
		if want := c.from[p] + int64(c.want.perPartition[p]); c.complete() && c.want.perPartition[p] > 0 && c.end[p] != want {
			failf("%s partition %d: last offset consumed %d, want %d (the records are at offsets %d..%d)",
				c.label, p, c.end[p]-1, want-1, c.from[p], want-1)
		}
	}
}

// ------------------------------------------------------- scenario 1: two readers

// runGroupCheck is the first consumer-group check described at the top of the file.
func runGroupCheck(brokers []string, runID string, rf int, verbose bool) {
	const label = "[group]"
	topic := "go-kafkago-group-" + runID
	groupID := "go-kafkago-group-" + runID
	fmt.Printf("--- kafka-go consumer group topic=%s partitions=%d records=%d+%d\n", topic, groupPartitions, groupRecords, groupLate)
	t0 := time.Now()
	var members []*groupMember
	defer dumpIfFailed(failures, &members)

	if !setupGroupTopic(label, brokers, topic, rf) {
		return
	}
	first := newRecordSet("group", runID, groupRecords)
	if err := first.coversAll(); err != nil {
		failf("%s %v", label, err)
		return
	}

	// 1. Two readers in one group. They join (and start fetching) before any
	// record exists, and the records are written only once the group has
	// settled: so no record is fetched under a superseded assignment, and a
	// partition read by both readers, a duplicate or a rebalance after settling
	// is a failure. (Were records fetched during a rebalance, kafka-go 0.2 could
	// deliver them twice: a revoked partition's buffered messages stay readable
	// until the new generation's partition readers start, while the new owner
	// already reads from the last committed offset.)
	a := newGroupMember(brokers, topic, groupID, "A", 0, verbose)
	b := newGroupMember(brokers, topic, groupID, "B", 0, verbose)
	ab := []*groupMember{a, b}
	members = append(members, ab...)
	defer closeMembers(label, ab...)
	events := make(chan groupEvent, 2*groupRecords+100)
	for _, m := range ab {
		m.consume(events)
	}
	defer stopConsumers(label, ab...)

	owner, _, writeStart, consumed, ok := settleThenConsume(label, "group", brokers, topic, first, events, ab)
	if !ok {
		return
	}
	consumed.watch(events, time.Second)
	stopConsumers(label, ab...)
	consumed.watch(events, 0)
	consumed.report(owner)
	checkSettled(label, ab)
	checkErrors(label, ab)
	if !a.finished || !b.finished || !consumed.complete() {
		return // step 2 would only repeat the failure
	}
	seen := consumed.firstSeen()
	fmt.Printf("    %d records written and consumed in %v: A %d, B %d; CommitMessages calls: A %d, B %d\n",
		groupRecords, consumed.completedAt.Sub(writeStart).Round(time.Millisecond), seen["A"], seen["B"], a.res.commits, b.res.commits)

	// 2. Close both, write more, resume with one new reader in the same group.
	closeStart := time.Now()
	closeMembers(label, ab...)
	fmt.Printf("    closed both readers in %v\n", time.Since(closeStart).Round(time.Millisecond))

	late := newRecordSet("late", runID, groupLate)
	if err := writeGroupRecords(brokers, topic, late.msgs); err != nil {
		failf("%s WriteMessages of %d more records: %v", label, groupLate, err)
		return
	}

	c := newGroupMember(brokers, topic, groupID, "C", 0, verbose)
	members = append(members, c)
	defer closeMembers(label, c)
	resumed := newConsumption(label+" resumed reader:", topic, late, first)
	resumeStart := time.Now()
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	readErrs := 0
	// ReadMessage = FetchMessage + CommitMessages (synchronous) with a GroupID.
	for n := 0; n < groupLate; {
		m, err := c.r.ReadMessage(rctx)
		if err != nil {
			if rctx.Err() != nil {
				failf("%s resumed reader got only %d of the %d new records within 30 s (%v)", label, len(resumed.seenBy), groupLate, c.t.state())
				break
			}
			readErrs++
			if readErrs <= 3 {
				failf("%s resumed reader: ReadMessage: %v", label, err)
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		n++
		resumed.check(groupEvent{reader: "C", msg: m})
	}
	resumeTime := time.Since(resumeStart)
	// Nothing may follow the new records (FetchMessage: no commit needed).
	if resumed.complete() {
		ectx, ecancel := context.WithTimeout(context.Background(), time.Second)
		if m, err := c.r.FetchMessage(ectx); err == nil {
			resumed.bad.add("record after the new ones", "key %q at p%d@%d", m.Key, m.Partition, m.Offset)
		}
		ecancel()
	}
	resumed.report(nil)
	fmt.Printf("    resumed reader got %d of the %d new records in %v (%v); group check took %v\n",
		len(resumed.seenBy), groupLate, resumeTime.Round(time.Millisecond), c.t.state(), time.Since(t0).Round(time.Millisecond))
}

// ------------------------------------ scenario 2: three readers, a hand-over

// runThreeReaderCheck is the second consumer-group check described at the top
// of the file.
func runThreeReaderCheck(brokers []string, runID string, rf int, verbose bool) {
	const label = "[group3]"
	topic := "go-kafkago-group3-" + runID
	groupID := "go-kafkago-group3-" + runID
	fmt.Printf("--- kafka-go consumer group, three readers and a hand-over: topic=%s partitions=%d records=%d+%d\n",
		topic, groupPartitions, groupRecords, groupLate)
	t0 := time.Now()
	var all []*groupMember
	defer dumpIfFailed(failures, &all)

	if !setupGroupTopic(label, brokers, topic, rf) {
		return
	}
	first := newRecordSet("three", runID, groupRecords)
	if err := first.coversAll(); err != nil {
		failf("%s %v", label, err)
		return
	}
	late := newRecordSet("three-late", runID, groupLate)

	// 1. Three readers, settled before any record exists (see runGroupCheck).
	// A and B commit synchronously (FetchMessage + CommitMessages); C reads with
	// ReadMessage and CommitInterval > 0, so its commits are queued and flushed
	// by kafka-go in the background.
	a := newGroupMember(brokers, topic, groupID, "A", 0, verbose)
	b := newGroupMember(brokers, topic, groupID, "B", 0, verbose)
	c := newGroupMember(brokers, topic, groupID, "C", groupCommitInterval, verbose)
	all = []*groupMember{a, b, c}
	defer closeMembers(label, all...)
	events := make(chan groupEvent, 2*groupRecords+100)
	for _, m := range all {
		m.consume(events)
	}
	defer checkErrors(label, all) // once the consumers have stopped
	defer stopConsumers(label, all...)

	// awaitCommits waits (≤ 10 s), once cons is complete, for the group's
	// committed offsets to reach want, and returns how long after the last
	// record arrived they had.
	awaitCommits := func(cons *consumption, want []int64) (time.Duration, bool) {
		if !cons.complete() {
			return 0, false
		}
		if err := waitCommitted(brokers[0], groupID, topic, want, 10*time.Second); err != nil {
			failf("%s committed offsets once all %d records were consumed: %v", cons.label, len(cons.want.msgs), err)
			return 0, false
		}
		return time.Since(cons.completedAt), true
	}

	owner1, gen1, writeStart, consumed, ok := settleThenConsume(label, "three readers", brokers, topic, first, events, all)
	if !ok {
		return
	}

	// 2. Everything consumed must get committed: A's and B's commits are
	// synchronous, C's are flushed on one of kafka-go's next heartbeat ticks
	// (every groupHeartbeat). Polling the group's offsets (raw OffsetFetch v1)
	// until they reach the end offsets waits for that flush instead of guessing
	// how long it takes, and checks that the broker stored and serves the
	// interval commits. The hand-over must start from fully committed offsets:
	// this tests the broker, not kafka-go's races (a commit still queued in C
	// could otherwise be flushed under the next generation for a partition that
	// has moved, behind its new owner's back).
	committedIn, committed := awaitCommits(consumed, endOffsets(first))
	consumed.watch(events, time.Second)
	consumed.report(owner1)
	checkSettled(label, all)
	if !committed {
		return // the hand-over would only repeat the failure
	}
	seen := consumed.firstSeen()
	flushes, _, _ := c.t.commitLog()
	fmt.Printf("    %d records written and consumed in %v: A %d, B %d, C %d; all committed %v later (C's interval commits: %d)\n",
		groupRecords, consumed.completedAt.Sub(writeStart).Round(time.Millisecond), seen["A"], seen["B"], seen["C"],
		committedIn.Round(time.Millisecond), flushes)

	// 3. Hand-over: close A while B and C keep consuming. A is a synchronous
	// committer, so C, the interval committer, lives through the generation
	// change: it flushes the new records' offsets under the new generation.
	// The partitions that move start from what the previous owner committed.
	// kafka-go 0.2's Close sends no LeaveGroup, so the broker rebalances once
	// A's session expires (groupSession) and B and C learn of it from a failed
	// Heartbeat; they must settle within 15 s of A's Close.
	handStart := time.Now()
	stopConsumers(label, a)
	closeMembers(label, a)
	bc := []*groupMember{b, c}
	owner2, gen2, ok := waitSettled(label, bc, gen1, 15*time.Second-time.Since(handStart))
	if !ok {
		return
	}
	var moved []string
	for p := 0; p < groupPartitions; p++ {
		if owner1[p] != owner2[p] {
			moved = append(moved, fmt.Sprintf("p%d %s->%s", p, owner1[p], owner2[p]))
		}
	}
	fmt.Printf("    closed A; B and C settled %v later at generation %d: %s (moved: %s)\n",
		time.Since(handStart).Round(time.Millisecond), gen2, assignmentString(bc), strings.Join(moved, ", "))

	// Only the new records may arrive, each from its partition's new owner
	// (anything fetched during the hand-over is checked here too: a re-read).
	writeStart = time.Now()
	if err := writeGroupRecords(brokers, topic, late.msgs); err != nil {
		failf("%s WriteMessages of %d more records: %v", label, groupLate, err)
		return
	}
	resumed := newConsumption(label+" after the hand-over:", topic, late, first)
	resumed.collect(events, 20*time.Second, bc)
	want := endOffsets(first, late)
	committedIn, committed = awaitCommits(resumed, want)
	resumed.watch(events, time.Second)
	checkSettled(label, bc)
	stopConsumers(label, bc...)
	resumed.watch(events, 0)
	resumed.report(owner2)
	closeMembers(label, bc...)
	if !committed {
		return
	}
	seen = resumed.firstSeen()
	fmt.Printf("    %d more records written and consumed in %v: B %d, C %d; all committed %v later\n",
		groupLate, resumed.completedAt.Sub(writeStart).Round(time.Millisecond), seen["B"], seen["C"], committedIn.Round(time.Millisecond))

	// 4. After closing: every partition's committed offset is its end offset,
	// both as written and as ListOffsets reports it.
	offsets, err := committedOffsets(brokers[0], groupID, topic)
	if err != nil {
		failf("%s after closing the readers: %v", label, err)
		return
	}
	ends, err := endOffsetsOf(brokers[0], topic)
	if err != nil {
		failf("%s after closing the readers: %v", label, err)
		return
	}
	for p := 0; p < groupPartitions; p++ {
		if offsets[p] != want[p] || ends[p] != want[p] {
			failf("%s partition %d: committed offset %d, end offset (ListOffsets) %d, want both %d (records written there)",
				label, p, offsets[p], ends[p], want[p])
		}
	}
	fmt.Printf("    after closing: committed offsets %v = end offsets; three-reader check took %v\n",
		offsets, time.Since(t0).Round(time.Millisecond))
}
