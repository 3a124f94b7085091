package conversation

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// extractProto reads top-level length-delimited fields of a protobuf
// message by number, without its schema: vals[i] is fields[i]'s value as
// a string ("" when absent). A field written more than once keeps its last
// value, as protobuf's own decoding of a singular string field does. Only
// the start of a message may be given (MaxBodyBytes): a field cut short
// there, or any malformed bytes, end the reading with what was found
// before. Values that are not valid UTF-8 (a bytes field or a nested
// message under that number) are ignored: a string field always is.
func extractProto(b []byte, fields []int) []string {
	vals := make([]string, len(fields))
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return vals
		}
		b = b[n:]
		if typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return vals
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return vals
		}
		b = b[n:]
		for i, f := range fields {
			if protowire.Number(f) == num && utf8.Valid(v) {
				vals[i] = string(v)
			}
		}
	}
	return vals
}
