// kafka-go (segmentio, Debian's 0.2.x) smoke test against a running Sluice broker.
//
// kafka-go 0.2 predates ApiVersions negotiation: it always speaks Metadata v1,
// Produce v2 (message format v1), Fetch v2 and ListOffsets v1. Kafka 4 (and so
// the kafka-protocol crate Sluice uses) dropped Produce < v3 and Fetch < v4.
// So this program first asks the broker (ApiVersions v0) whether it advertises
// those versions; if it does not, it prints a SKIPPED line and exits 77, which
// tests/interop/run.sh reports as skipped. If the broker does advertise them,
// the full produce/consume check must pass.
//
// The check: per codec (none, gzip, snappy, lz4) write N keyed records with
// kafka.NewWriter to a fresh (auto-created) topic, read them back with
// kafka.NewReader on partition 0 without a consumer group and compare keys,
// values and offsets.
//
// Exit status: 0 ok, 1 a check failed, 77 skipped (versions not advertised).
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
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

// apiVersions sends a raw ApiVersions v0 request and returns key -> range.
func apiVersions(addr string) (map[int16]versionRange, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	clientID := "sluice-interop-kafka-go-probe"
	var body bytes.Buffer
	_ = binary.Write(&body, binary.BigEndian, int16(18)) // api key ApiVersions
	_ = binary.Write(&body, binary.BigEndian, int16(0))  // version 0
	_ = binary.Write(&body, binary.BigEndian, int32(7))  // correlation id
	_ = binary.Write(&body, binary.BigEndian, int16(len(clientID)))
	body.WriteString(clientID)
	var frame bytes.Buffer
	_ = binary.Write(&frame, binary.BigEndian, int32(body.Len()))
	frame.Write(body.Bytes())
	if _, err := conn.Write(frame.Bytes()); err != nil {
		return nil, err
	}
	var size int32
	if err := binary.Read(conn, binary.BigEndian, &size); err != nil {
		return nil, err
	}
	if size < 10 || size > 1<<20 {
		return nil, fmt.Errorf("implausible ApiVersions response size %d", size)
	}
	resp := make([]byte, size)
	if _, err := io.ReadFull(conn, resp); err != nil {
		return nil, err
	}
	r := bytes.NewReader(resp)
	var corr int32
	var errCode int16
	var n int32
	_ = binary.Read(r, binary.BigEndian, &corr)
	_ = binary.Read(r, binary.BigEndian, &errCode)
	if corr != 7 {
		return nil, fmt.Errorf("correlation id %d, want 7", corr)
	}
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

func runCodec(brokers []string, name string, codec kafka.CompressionCodec, n int, runID string) {
	topic := fmt.Sprintf("go-kafkago-%s-%s", name, runID)
	fmt.Printf("--- kafka-go codec=%s topic=%s n=%d\n", name, topic, n)
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
	// The topic is auto-created by the first metadata request; the writer
	// retries until it has partitions.
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
	needs := []struct {
		key     int16
		name    string
		version int16
	}{{3, "Metadata", 1}, {0, "Produce", 2}, {1, "Fetch", 2}, {2, "ListOffsets", 1}}
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
	if failures > 0 {
		fmt.Printf("kafka-go smoke: FAILED (%d failures)\n", failures)
		os.Exit(1)
	}
	fmt.Println("kafka-go smoke: OK")
}
