package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploghttp"
	"go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"go.opentelemetry.io/otel/sdk/resource"
	"go.opentelemetry.io/otel/trace"
)

// EventLog sends structured events as OTLP log records to the collector
// the traces go to: each Write is one JSON object (a line of an events
// file), which becomes one record named hopwatch.<prefix>.<type>, with the
// object's fields as attributes and its "time" as the record's timestamp.
// It is the OTLP side of the JSON-lines writers (conversation events), so
// the two carry exactly the same fields.
//
// Export is batched off the caller's goroutine by the SDK's processor,
// whose bounded queue drops records rather than block; a collector that is
// down costs failed exports, never a slower turn.
type EventLog struct {
	lp     *sdklog.LoggerProvider
	logger log.Logger
	prefix string
}

// ErrNoOTLP is returned by OpenEventLog when no OTLP endpoint is configured.
var ErrNoOTLP = errors.New("no OTLP endpoint is configured (telemetry.tracing.otlp)")

// OpenEventLog starts an event log under prefix (e.g. "conversation"). It
// does not connect: a collector that is down does not hold up start-up.
func (t *Telemetry) OpenEventLog(prefix string) (*EventLog, error) {
	o := t.cfg.Tracing.OTLP
	if o == nil {
		return nil, ErrNoOTLP
	}
	exp, err := newLogExporter(o)
	if err != nil {
		return nil, fmt.Errorf("telemetry: event log: %w", err)
	}
	name := t.cfg.ServiceName
	if name == "" {
		name = DefaultServiceName
	}
	res := resource.NewSchemaless(attribute.String("service.name", name))
	lp := sdklog.NewLoggerProvider(
		sdklog.WithResource(res),
		sdklog.WithProcessor(sdklog.NewBatchProcessor(exp)),
	)
	return &EventLog{lp: lp, logger: lp.Logger("github.com/hopwatch/hopwatch/" + prefix), prefix: prefix}, nil
}

func newLogExporter(o *OTLP) (sdklog.Exporter, error) {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultOTLPTimeout
	}
	ctx := context.Background()
	if o.Protocol == "http" {
		return otlploghttp.New(ctx, otlploghttp.WithEndpoint(o.Endpoint), otlploghttp.WithInsecure(),
			otlploghttp.WithTimeout(timeout), otlploghttp.WithRetry(otlploghttp.RetryConfig{Enabled: false}))
	}
	return otlploggrpc.New(ctx, otlploggrpc.WithEndpoint(o.Endpoint), otlploggrpc.WithInsecure(),
		otlploggrpc.WithTimeout(timeout), otlploggrpc.WithRetry(otlploggrpc.RetryConfig{Enabled: false}))
}

// Write emits b, one JSON object, as one log record. It never fails for
// the collector's sake; only bytes that are not a JSON object are refused.
func (e *EventLog) Write(b []byte) (int, error) {
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		return 0, fmt.Errorf("telemetry: event log: not a JSON object: %w", err)
	}
	var rec log.Record
	name := e.prefix
	if typ, ok := fields["type"].(string); ok {
		name += "." + typ
	}
	rec.SetEventName("hopwatch." + name)
	rec.SetSeverity(log.SeverityInfo)
	rec.SetObservedTimestamp(time.Now())
	if ts, ok := fields["time"].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			rec.SetTimestamp(t)
		}
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		rec.AddAttributes(attribute.KeyValue{Key: attribute.Key("hopwatch." + k), Value: logValue(fields[k])})
	}
	e.logger.Emit(recordContext(fields), rec)
	return len(b), nil
}

// recordContext carries the object's trace_id and span_id (hex, as the
// access log and the events write them), so that the SDK sets them as the
// record's trace context and a log backend links the line to its trace.
// An object without valid ids gets none.
func recordContext(fields map[string]any) context.Context {
	ctx := context.Background()
	tid, _ := fields["trace_id"].(string)
	sid, _ := fields["span_id"].(string)
	traceID, err := trace.TraceIDFromHex(tid)
	if err != nil {
		return ctx
	}
	sc := trace.SpanContextConfig{TraceID: traceID, TraceFlags: trace.FlagsSampled}
	if spanID, err := trace.SpanIDFromHex(sid); err == nil {
		sc.SpanID = spanID
	}
	return trace.ContextWithSpanContext(ctx, trace.NewSpanContext(sc))
}

// logValue converts a decoded JSON value: strings, booleans, numbers
// (integers as integers) and lists of strings keep their type; anything
// else (the events have no nested objects today) travels as its JSON.
func logValue(v any) attribute.Value {
	switch v := v.(type) {
	case string:
		return attribute.StringValue(v)
	case bool:
		return attribute.BoolValue(v)
	case float64:
		if v == float64(int64(v)) {
			return attribute.Int64Value(int64(v))
		}
		return attribute.Float64Value(v)
	case []any:
		strs := make([]string, 0, len(v))
		for _, x := range v {
			s, ok := x.(string)
			if !ok {
				b, _ := json.Marshal(v)
				return attribute.StringValue(string(b))
			}
			strs = append(strs, s)
		}
		return attribute.StringSliceValue(strs)
	}
	b, _ := json.Marshal(v)
	return attribute.StringValue(string(b))
}

// Close flushes what is queued (until ctx ends) and stops.
func (e *EventLog) Close(ctx context.Context) error { return e.lp.Shutdown(ctx) }
