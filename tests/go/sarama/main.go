// Sarama smoke test against a running Sluice broker.
//
// Creates a 2-partition topic per compression codec with the cluster admin API,
// produces N keyed records with headers and explicit timestamps (acks=all) with
// a manual partitioner, checks the offsets the producer got back, checks
// ListOffsets (oldest/newest), consumes every partition back with the plain
// partition consumer (no consumer group) and compares every field, then
// deletes the topics. Then a consumer group reads a topic, commits through
// Sarama's offset manager, and a second group session resumes after the commits.
// Then three members of one group split a six-partition topic (none owned twice, none
// orphaned, every record consumed exactly once by its owner), their offsets are committed
// while they run (Sarama 1.22's offset manager commits marked offsets every
// Consumer.Offsets.CommitInterval: that is its auto-commit; 1.22 has neither a switch for it
// nor a manual session Commit()), and after they left a new member resumes after them.
// Sarama 1.22 has no static membership (no group instance id in its config; it sends
// JoinGroup v1 only), so that is not tested here.
//
// Built offline in GOPATH mode (see tests/interop/run.sh):
//
//	GO111MODULE=off GOPROXY=off GOPATH=<repo>/tests/go/gopath:/usr/share/gocode go build
//
// Exit status: 0 all good, 1 a check failed.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Shopify/sarama"
)

const partitions = 2

type sent struct {
	key, value []byte
	headers    map[string]string
	ts         time.Time
}

var failures int

func failf(format string, args ...interface{}) {
	failures++
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
}

func newConfig() *sarama.Config {
	cfg := sarama.NewConfig()
	cfg.ClientID = "sluice-interop-sarama"
	// Sarama 1.22 picks request versions from this; 2.1 is the oldest that
	// allows zstd and gives Produce v3 / Fetch v4 / Metadata v5 / ListOffsets v1,
	// all within Kafka 4's version floors.
	cfg.Version = sarama.V2_1_0_0
	cfg.Producer.Return.Successes = true
	cfg.Producer.Return.Errors = true
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	cfg.Producer.Partitioner = sarama.NewManualPartitioner
	cfg.Producer.Retry.Max = 3
	cfg.Producer.Timeout = 10 * time.Second
	cfg.Producer.MaxMessageBytes = 1000000
	cfg.Consumer.Return.Errors = true
	cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	cfg.Admin.Timeout = 10 * time.Second
	cfg.Metadata.Retry.Max = 10
	cfg.Metadata.Retry.Backoff = 200 * time.Millisecond
	cfg.Net.DialTimeout = 5 * time.Second
	cfg.Net.ReadTimeout = 15 * time.Second
	cfg.Net.WriteTimeout = 15 * time.Second
	return cfg
}

func runCodec(brokers []string, codecName string, codec sarama.CompressionCodec, n int, runID string) {
	topic := fmt.Sprintf("go-sarama-%s-%s", codecName, runID)
	fmt.Printf("--- sarama codec=%s topic=%s n=%d\n", codecName, topic, n)

	cfg := newConfig()
	cfg.Producer.Compression = codec

	admin, err := sarama.NewClusterAdmin(brokers, cfg)
	if err != nil {
		failf("[%s] NewClusterAdmin: %v", codecName, err)
		return
	}
	defer admin.Close()
	err = admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1}, false)
	if err != nil {
		failf("[%s] CreateTopic(%s): %v", codecName, topic, err)
		return
	}
	// Creating it again must fail with TOPIC_ALREADY_EXISTS.
	err = admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1}, false)
	if err == nil || !strings.Contains(err.Error(), sarama.ErrTopicAlreadyExists.Error()) {
		failf("[%s] second CreateTopic(%s): want %v, got %v", codecName, topic, sarama.ErrTopicAlreadyExists, err)
	}

	client, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		failf("[%s] NewClient: %v", codecName, err)
		return
	}
	defer client.Close()

	// Wait for the topic to show up with leaders for every partition.
	if err := waitLeaders(client, topic, partitions); err != nil {
		failf("[%s] %v", codecName, err)
		return
	}

	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		failf("[%s] NewSyncProducer: %v", codecName, err)
		return
	}

	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	msgs := make([]*sarama.ProducerMessage, 0, n)
	want := make([]sent, 0, n)
	for i := 0; i < n; i++ {
		key := []byte(fmt.Sprintf("key-%05d", i))
		// Compressible payload, varying size.
		value := []byte(fmt.Sprintf("value-%05d-%s-%s", i, codecName, strings.Repeat("abcdefgh", i%50)))
		ts := base.Add(time.Duration(i) * time.Millisecond)
		hdrs := map[string]string{"idx": fmt.Sprint(i), "codec": codecName}
		m := &sarama.ProducerMessage{
			Topic:     topic,
			Partition: int32(i % partitions),
			Key:       sarama.ByteEncoder(key),
			Value:     sarama.ByteEncoder(value),
			Timestamp: ts,
			Headers: []sarama.RecordHeader{
				{Key: []byte("idx"), Value: []byte(hdrs["idx"])},
				{Key: []byte("codec"), Value: []byte(hdrs["codec"])},
			},
		}
		msgs = append(msgs, m)
		want = append(want, sent{key: key, value: value, headers: hdrs, ts: ts})
	}
	start := time.Now()
	if err := producer.SendMessages(msgs); err != nil {
		failf("[%s] SendMessages: %v", codecName, err)
		_ = producer.Close()
		return
	}
	_ = producer.Close()
	fmt.Printf("    produced %d records in %v\n", n, time.Since(start))

	// Offsets assigned by the broker: per partition a permutation of 0..k-1.
	byOffset := make([]map[int64]int, partitions)
	for p := range byOffset {
		byOffset[p] = map[int64]int{}
	}
	for i, m := range msgs {
		if m.Partition != int32(i%partitions) {
			failf("[%s] record %d went to partition %d, want %d", codecName, i, m.Partition, i%partitions)
		}
		if _, dup := byOffset[m.Partition][m.Offset]; dup {
			failf("[%s] offset %d in partition %d given twice", codecName, m.Offset, m.Partition)
		}
		byOffset[m.Partition][m.Offset] = i
	}
	for p := 0; p < partitions; p++ {
		count := int64(len(byOffset[p]))
		for o := int64(0); o < count; o++ {
			if _, ok := byOffset[p][o]; !ok {
				failf("[%s] partition %d: offsets not contiguous, %d missing", codecName, p, o)
				break
			}
		}
		oldest, err := client.GetOffset(topic, int32(p), sarama.OffsetOldest)
		if err != nil || oldest != 0 {
			failf("[%s] partition %d: GetOffset(oldest) = %d, %v; want 0", codecName, p, oldest, err)
		}
		newest, err := client.GetOffset(topic, int32(p), sarama.OffsetNewest)
		if err != nil || newest != count {
			failf("[%s] partition %d: GetOffset(newest) = %d, %v; want %d", codecName, p, newest, err, count)
		}
	}

	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		failf("[%s] NewConsumer: %v", codecName, err)
		return
	}
	defer consumer.Close()
	got := 0
	for p := 0; p < partitions; p++ {
		pc, err := consumer.ConsumePartition(topic, int32(p), sarama.OffsetOldest)
		if err != nil {
			failf("[%s] ConsumePartition(%d): %v", codecName, p, err)
			continue
		}
		expect := int64(len(byOffset[p]))
		next := int64(0)
		timeout := time.After(30 * time.Second)
	loop:
		for next < expect {
			select {
			case m := <-pc.Messages():
				if m.Offset != next {
					failf("[%s] partition %d: got offset %d, want %d", codecName, p, m.Offset, next)
					break loop
				}
				i := byOffset[p][m.Offset]
				w := want[i]
				if !bytes.Equal(m.Key, w.key) || !bytes.Equal(m.Value, w.value) {
					failf("[%s] p%d@%d: key/value mismatch: got %q/%q want %q/%q", codecName, p, m.Offset, m.Key, trunc(m.Value), w.key, trunc(w.value))
				}
				if !m.Timestamp.Equal(w.ts) {
					failf("[%s] p%d@%d: timestamp %v, want %v", codecName, p, m.Offset, m.Timestamp, w.ts)
				}
				gotH := map[string]string{}
				for _, h := range m.Headers {
					gotH[string(h.Key)] = string(h.Value)
				}
				if len(m.Headers) != 2 || gotH["idx"] != w.headers["idx"] || gotH["codec"] != w.headers["codec"] {
					failf("[%s] p%d@%d: headers %v, want %v", codecName, p, m.Offset, gotH, w.headers)
				}
				next++
				got++
			case cerr := <-pc.Errors():
				failf("[%s] partition %d consumer error: %v", codecName, p, cerr)
				break loop
			case <-timeout:
				failf("[%s] partition %d: timed out after %d of %d records", codecName, p, next, expect)
				break loop
			}
		}
		_ = pc.Close()
	}
	fmt.Printf("    consumed %d/%d records back\n", got, n)
	if got != n {
		failf("[%s] consumed %d records, want %d", codecName, got, n)
	}

	if err := admin.DeleteTopic(topic); err != nil {
		failf("[%s] DeleteTopic(%s): %v", codecName, topic, err)
	}
}

// waitLeaders waits up to 15 s for `topic` to show `parts` partitions, each with a leader.
func waitLeaders(client sarama.Client, topic string, parts int32) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		_ = client.RefreshMetadata(topic)
		ps, err := client.Partitions(topic)
		ok := err == nil && int32(len(ps)) == parts
		for _, p := range ps {
			if _, lerr := client.Leader(topic, p); lerr != nil {
				ok = false
			}
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("topic %s never got %d partitions with leaders (partitions=%v err=%v)", topic, parts, ps, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// groupHandler consumes claims until `want` messages were seen, marking each one.
type groupHandler struct {
	want   int
	got    chan *sarama.ConsumerMessage
	cancel context.CancelFunc
	seen   int
}

func (h *groupHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (h *groupHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *groupHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		sess.MarkMessage(m, "sarama-meta")
		h.got <- m
	}
	return nil
}

// consumeGroup runs one group session until `want` messages arrived (or 60 s passed) and
// closes the group, which commits the marked offsets.
func consumeGroup(brokers []string, group, topic string, want int) []*sarama.ConsumerMessage {
	cfg := newConfig()
	cfg.Consumer.Offsets.CommitInterval = 200 * time.Millisecond
	cg, err := sarama.NewConsumerGroup(brokers, group, cfg)
	if err != nil {
		failf("[group] NewConsumerGroup: %v", err)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &groupHandler{want: want, got: make(chan *sarama.ConsumerMessage, 1000), cancel: cancel}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := cg.Consume(ctx, []string{topic}, h); err != nil && ctx.Err() == nil {
				failf("[group] Consume: %v", err)
				return
			}
		}
	}()
	go func() {
		for err := range cg.Errors() {
			fmt.Fprintf(os.Stderr, "group error: %v\n", err)
		}
	}()
	var out []*sarama.ConsumerMessage
	timeout := time.After(60 * time.Second)
	for len(out) < want {
		select {
		case m := <-h.got:
			out = append(out, m)
		case <-timeout:
			failf("[group] %s: timed out with %d of %d messages", group, len(out), want)
			want = len(out)
		}
	}
	// Let the offset manager commit what was marked, then leave.
	time.Sleep(500 * time.Millisecond)
	cancel()
	<-done
	if err := cg.Close(); err != nil {
		failf("[group] Close: %v", err)
	}
	return out
}

func runGroup(brokers []string, runID string) {
	topic := "go-sarama-group-" + runID
	group := "go-sarama-group-" + runID
	fmt.Printf("--- sarama consumer group topic=%s\n", topic)
	cfg := newConfig()
	admin, err := sarama.NewClusterAdmin(brokers, cfg)
	if err != nil {
		failf("[group] NewClusterAdmin: %v", err)
		return
	}
	defer admin.Close()
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: 1}, false); err != nil {
		failf("[group] CreateTopic: %v", err)
		return
	}
	produce := func(perPartition int, tag string) {
		produceEach(brokers, cfg, topic, partitions, perPartition, tag)
	}
	produce(5, "first")
	first := consumeGroup(brokers, group, topic, 5*partitions)
	fmt.Printf("    group session 1: %d messages\n", len(first))
	produce(1, "late")
	second := consumeGroup(brokers, group, topic, partitions)
	for _, m := range second {
		if m.Offset != 5 || !strings.HasPrefix(string(m.Value), "late-") {
			failf("[group] resumed at p%d@%d %q, want offset 5 (after the committed offsets)", m.Partition, m.Offset, m.Value)
		}
	}
	fmt.Printf("    group session 2 resumed with %d new messages\n", len(second))
}

// produceEach writes perPartition records "<tag>-<partition>-<i>" to every partition.
func produceEach(brokers []string, cfg *sarama.Config, topic string, parts, perPartition int, tag string) {
	p, err := sarama.NewSyncProducer(brokers, cfg)
	if err != nil {
		failf("[group] NewSyncProducer: %v", err)
		return
	}
	defer p.Close()
	for part := 0; part < parts; part++ {
		for i := 0; i < perPartition; i++ {
			_, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Partition: int32(part),
				Value: sarama.StringEncoder(fmt.Sprintf("%s-%d-%d", tag, part, i))})
			if err != nil {
				failf("[group] SendMessage: %v", err)
			}
		}
	}
}

// replicationFactor is the one tests/interop/run.sh asks for (3 on its three-node cluster).
func replicationFactor() int16 {
	if rf, err := strconv.Atoi(os.Getenv("SLUICE_REPLICATION_FACTOR")); err == nil && rf > 0 {
		return int16(rf)
	}
	return 1
}

type groupRecord struct {
	member    int
	partition int32
	offset    int64
}

// memberHandler keeps one member's current generation and claims and reports (and marks,
// so the offset manager commits it) every message the member gets.
type memberHandler struct {
	idx   int
	topic string
	got   chan<- groupRecord
	mu    sync.Mutex
	gen   int32
	parts []int32
}

func (h *memberHandler) Setup(s sarama.ConsumerGroupSession) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen = s.GenerationID()
	h.parts = append([]int32(nil), s.Claims()[h.topic]...)
	return nil
}

func (h *memberHandler) Cleanup(sarama.ConsumerGroupSession) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.parts = nil
	return nil
}

func (h *memberHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		sess.MarkMessage(m, "")
		h.got <- groupRecord{h.idx, m.Partition, m.Offset}
	}
	return nil
}

func (h *memberHandler) claims() (int32, []int32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gen, append([]int32(nil), h.parts...)
}

type groupMember struct {
	cg     sarama.ConsumerGroup
	h      *memberHandler
	cancel context.CancelFunc
	done   chan struct{}
}

// startMember runs one group member: Consume again after every rebalance until stopped.
func startMember(brokers []string, cfg *sarama.Config, group, topic string, idx int, got chan<- groupRecord) *groupMember {
	cg, err := sarama.NewConsumerGroup(brokers, group, cfg)
	if err != nil {
		failf("[group3] NewConsumerGroup: %v", err)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &groupMember{cg: cg, h: &memberHandler{idx: idx, topic: topic, got: got}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		for ctx.Err() == nil {
			// A rebalance under way can make Consume give up (REBALANCE_IN_PROGRESS after
			// its retries); the checks below time out if the group never settles.
			if err := cg.Consume(ctx, []string{topic}, m.h); err != nil && ctx.Err() == nil {
				fmt.Fprintf(os.Stderr, "group3 member %d: Consume: %v\n", idx, err)
				time.Sleep(200 * time.Millisecond)
			}
		}
	}()
	go func() {
		for err := range cg.Errors() {
			fmt.Fprintf(os.Stderr, "group3 member %d error: %v\n", idx, err)
		}
	}()
	return m
}

// stop ends the member's session and closes it (LeaveGroup; the offset manager flushes).
func (m *groupMember) stop() {
	m.cancel()
	select {
	case <-m.done:
	case <-time.After(20 * time.Second):
		failf("[group3] member %d: Consume did not return within 20 s of cancelling", m.h.idx)
	}
	if err := m.cg.Close(); err != nil {
		failf("[group3] member %d: Close: %v", m.h.idx, err)
	}
}

// runGroupThree: three members split six partitions, each record is consumed once by the
// partition's owner, the offset manager's periodic commits reach the coordinator while the
// members run, and a new member resumes after them.
func runGroupThree(brokers []string, runID string) {
	const parts, per = 6, 5
	topic := "go-sarama-group3-" + runID
	group := "go-sarama-group3-" + runID
	fmt.Printf("--- sarama consumer group, three members: topic=%s partitions=%d\n", topic, parts)
	start := time.Now()
	cfg := newConfig()
	admin, err := sarama.NewClusterAdmin(brokers, cfg)
	if err != nil {
		failf("[group3] NewClusterAdmin: %v", err)
		return
	}
	defer admin.Close()
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: parts, ReplicationFactor: replicationFactor()}, false); err != nil {
		failf("[group3] CreateTopic: %v", err)
		return
	}
	client, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		failf("[group3] NewClient: %v", err)
		return
	}
	defer client.Close()
	if err := waitLeaders(client, topic, parts); err != nil {
		failf("[group3] %v", err)
		return
	}

	gcfg := newConfig()
	gcfg.Consumer.Group.Session.Timeout = 6 * time.Second
	gcfg.Consumer.Group.Heartbeat.Interval = 500 * time.Millisecond
	gcfg.Consumer.Group.Rebalance.Retry.Backoff = 200 * time.Millisecond
	gcfg.Consumer.Offsets.CommitInterval = 200 * time.Millisecond
	got := make(chan groupRecord, 1000)
	var members []*groupMember
	for i := 0; i < 3; i++ {
		if m := startMember(brokers, gcfg, group, topic, i, got); m != nil {
			members = append(members, m)
		}
	}
	stopped := false
	stopAll := func() {
		if stopped {
			return
		}
		stopped = true
		for _, m := range members {
			m.stop()
		}
	}
	defer stopAll()
	if len(members) != 3 {
		return
	}

	// The split: one generation, 2/2/2, disjoint and complete.
	type view struct {
		gen   int32
		parts []int32
	}
	snapshot := func() []view {
		vs := make([]view, len(members))
		for i, m := range members {
			vs[i].gen, vs[i].parts = m.h.claims()
		}
		return vs
	}
	settled := func(vs []view) bool {
		owner := map[int32]int{}
		for i, v := range vs {
			if v.gen <= 0 || v.gen != vs[0].gen || len(v.parts) != parts/3 {
				return false
			}
			for _, p := range v.parts {
				if _, twice := owner[p]; twice {
					return false
				}
				owner[p] = i
			}
		}
		return len(owner) == parts
	}
	var split []view
	deadline := time.Now().Add(30 * time.Second)
	for split = snapshot(); !settled(split); split = snapshot() {
		if time.Now().After(deadline) {
			failf("[group3] no 2/2/2 split of %d partitions within 30 s: %+v", parts, split)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	owner := map[int32]int{}
	for i, v := range split {
		for _, p := range v.parts {
			owner[p] = i
		}
	}
	fmt.Printf("    split at generation %d after %v: %v %v %v\n", split[0].gen, time.Since(start).Round(time.Millisecond), split[0].parts, split[1].parts, split[2].parts)

	// Produced once the split is settled, so no rebalance can hand a record out twice.
	produceEach(brokers, cfg, topic, parts, per, "v")
	var recs []groupRecord
	timeout := time.After(30 * time.Second)
	grace := time.After(24 * time.Hour)
collect:
	for {
		select {
		case r := <-got:
			recs = append(recs, r)
			if len(recs) == parts*per {
				grace = time.After(500 * time.Millisecond) // anything delivered twice shows up now
			}
		case <-grace:
			break collect
		case <-timeout:
			failf("[group3] timed out with %d of %d records", len(recs), parts*per)
			break collect
		}
	}
	seen := map[[2]int64]int{}
	for _, r := range recs {
		seen[[2]int64{int64(r.partition), r.offset}]++
		if owner[r.partition] != r.member {
			failf("[group3] p%d@%d delivered to member %d, owner is member %d", r.partition, r.offset, r.member, owner[r.partition])
		}
	}
	for p := int64(0); p < parts; p++ {
		for o := int64(0); o < per; o++ {
			if n := seen[[2]int64{p, o}]; n != 1 {
				failf("[group3] p%d@%d delivered %d times, want once", p, o, n)
			}
		}
	}
	if len(seen) != parts*per {
		failf("[group3] %d distinct records delivered, want %d", len(seen), parts*per)
	}
	if now := snapshot(); fmt.Sprint(now) != fmt.Sprint(split) {
		failf("[group3] the assignment changed while consuming: %+v -> %+v", split, now)
	}

	// The marked offsets are committed while the members run (every CommitInterval).
	tps := map[string][]int32{topic: {0, 1, 2, 3, 4, 5}}
	deadline = time.Now().Add(15 * time.Second)
	for {
		resp, err := admin.ListConsumerGroupOffsets(group, tps)
		var offs []int64
		ok := err == nil
		if ok {
			for p := int32(0); p < parts; p++ {
				b := resp.GetBlock(topic, p)
				if b == nil || b.Err != sarama.ErrNoError {
					ok = false
					offs = append(offs, -2)
					continue
				}
				offs = append(offs, b.Offset)
				ok = ok && b.Offset == per
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			failf("[group3] committed offsets while running: %v (err %v), want %d on every partition", offs, err, per)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopAll()

	// A new member resumes after the committed offsets.
	produceEach(brokers, cfg, topic, parts, 1, "late")
	second := consumeGroup(brokers, group, topic, parts)
	var resumed []string
	for _, m := range second {
		resumed = append(resumed, fmt.Sprintf("p%d@%d", m.Partition, m.Offset))
		if m.Offset != per || !strings.HasPrefix(string(m.Value), "late-") {
			failf("[group3] resumed at p%d@%d %q, want offset %d (after the committed offsets)", m.Partition, m.Offset, m.Value, per)
		}
	}
	sort.Strings(resumed)
	fmt.Printf("    %d records consumed, then committed while running; resumed at %v; took %v\n", len(recs), resumed, time.Since(start).Round(time.Millisecond))
}

func trunc(b []byte) string {
	if len(b) > 60 {
		return string(b[:60]) + "..."
	}
	return string(b)
}

func main() {
	bootstrap := flag.String("brokers", os.Getenv("SLUICE_BOOTSTRAP"), "comma-separated bootstrap brokers (default $SLUICE_BOOTSTRAP)")
	n := flag.Int("n", 200, "records per codec")
	flag.Parse()
	if *bootstrap == "" {
		fmt.Fprintln(os.Stderr, "no brokers: pass -brokers or set SLUICE_BOOTSTRAP")
		os.Exit(2)
	}
	brokers := strings.Split(*bootstrap, ",")
	runID := fmt.Sprintf("%d", time.Now().UnixNano())
	codecs := []struct {
		name  string
		codec sarama.CompressionCodec
	}{
		{"none", sarama.CompressionNone},
		{"gzip", sarama.CompressionGZIP},
		{"snappy", sarama.CompressionSnappy},
		{"lz4", sarama.CompressionLZ4},
		{"zstd", sarama.CompressionZSTD},
	}
	for _, c := range codecs {
		runCodec(brokers, c.name, c.codec, *n, runID)
	}
	runGroup(brokers, runID)
	runGroupThree(brokers, runID)
	if failures > 0 {
		fmt.Printf("sarama smoke: FAILED (%d failures)\n", failures)
		os.Exit(1)
	}
	fmt.Println("sarama smoke: OK")
}
