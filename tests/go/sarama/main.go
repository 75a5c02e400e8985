// Sarama smoke test against a running Sluice broker.
//
// Creates a 2-partition topic per compression codec with the cluster admin API,
// produces N keyed records with headers and explicit timestamps (acks=all) with
// a manual partitioner, checks the offsets the producer got back, checks
// ListOffsets (oldest/newest), consumes every partition back with the plain
// partition consumer (no consumer group) and compares every field, then
// deletes the topics. Then a consumer group reads a topic, commits through
// Sarama's offset manager, and a second group session resumes after the commits.
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
	"strings"
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
	deadline := time.Now().Add(15 * time.Second)
	for {
		_ = client.RefreshMetadata(topic)
		ps, err := client.Partitions(topic)
		ok := err == nil && len(ps) == partitions
		if ok {
			for _, p := range ps {
				if _, lerr := client.Leader(topic, p); lerr != nil {
					ok = false
				}
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			failf("[%s] topic %s never got %d partitions with leaders (partitions=%v err=%v)", codecName, topic, partitions, ps, err)
			return
		}
		time.Sleep(200 * time.Millisecond)
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
		p, err := sarama.NewSyncProducer(brokers, cfg)
		if err != nil {
			failf("[group] NewSyncProducer: %v", err)
			return
		}
		defer p.Close()
		for part := 0; part < partitions; part++ {
			for i := 0; i < perPartition; i++ {
				_, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Partition: int32(part),
					Value: sarama.StringEncoder(fmt.Sprintf("%s-%d-%d", tag, part, i))})
				if err != nil {
					failf("[group] SendMessage: %v", err)
				}
			}
		}
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
	if failures > 0 {
		fmt.Printf("sarama smoke: FAILED (%d failures)\n", failures)
		os.Exit(1)
	}
	fmt.Println("sarama smoke: OK")
}
