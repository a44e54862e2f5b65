/* json.h — a small strict JSON reader for the safetensors header.
 *
 * Not a general parser: the caller walks the grammar it expects (objects,
 * strings, unsigned integers) and anything else is an error. Strict: RFC 8259
 * strings (escapes decoded, valid UTF-8, no raw control bytes, no \u0000),
 * integers in plain decimal (no sign, fraction, exponent or leading zero) up
 * to 2^53, whitespace only between tokens. Errors are FEDGE_ERR_IMPORT_FORMAT
 * with the reason and byte offset written to err. */
#ifndef FEDGE_MODEL_TOOL_JSON_H
#define FEDGE_MODEL_TOOL_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *start, *p, *end;
    char *err;
    size_t errlen;
} mdl_json;

void mdl_json_init(mdl_json *j, const uint8_t *buf, size_t len, char *err, size_t errlen);
/* The next non-whitespace byte, or -1 at the end. */
int mdl_json_peek(mdl_json *j);
/* Consumes the next non-whitespace byte, which must be c. */
int mdl_json_expect(mdl_json *j, char c);
/* A string into out (NUL-terminated, at most cap - 1 bytes); *len gets its
 * length. Longer strings are an error. */
int mdl_json_string(mdl_json *j, char *out, size_t cap, size_t *len);
int mdl_json_uint(mdl_json *j, uint64_t *v);
/* Only whitespace is left. */
int mdl_json_end(mdl_json *j);
/* Sets err to "what at byte N" and returns FEDGE_ERR_IMPORT_FORMAT. */
int mdl_json_fail(mdl_json *j, const char *what);

#endif
