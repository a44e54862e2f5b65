/* fuzz_audit_canon.c — an audit entry's canonical bytes (policy/audit.h,
 * docs/AUDIT.md "Canonical bytes", "Canon versions"), as fedge-audit verify
 * decodes them from a log that may have been edited: the header, every
 * column, and each value as the failure messages print it.
 *
 * Input: the canon blob. Invariants: the header parses only under a known
 * format mark (FCN1, FCN2); every name and value lies inside the input;
 * every tag is one of the six; a value's text is NUL-terminated within its
 * buffer. */
#include "audit_impl.h"
#include "error.h"
#include "fuzz_util.h"

static int inside(const uint8_t *p, size_t n, const uint8_t *lo, const uint8_t *hi)
{
    return p >= lo && p <= hi && n <= (size_t)(hi - p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    const uint8_t *end = data + size;
    canon_view v;
    if (canon_parse(data, size, &v) != FEDGE_OK)
        return 0;
    FUZZ_CHECK(size >= 4 && (memcmp(data, v.format == FEDGE_AUDIT_FCN1 ? "FCN1" : "FCN2", 4) == 0));
    FUZZ_CHECK(v.format >= FEDGE_AUDIT_FCN1 && v.format <= FEDGE_AUDIT_FCN_LATEST);
    FUZZ_CHECK(inside((const uint8_t *)v.tbl, v.tbl_len, data, end));
    FUZZ_CHECK(inside((const uint8_t *)v.key, v.key_len, data, end));
    FUZZ_CHECK(v.end == end && inside(v.cols, 0, data, end));
    const uint8_t *pos = v.cols;
    for (size_t i = 0; i < v.n_cols; i++) {
        canon_col c;
        if (canon_next(&v, &pos, &c) != FEDGE_OK)
            break;
        FUZZ_CHECK(inside((const uint8_t *)c.name, c.name_len, data, end));
        FUZZ_CHECK(inside(c.val, c.val_len, data, end));
        FUZZ_CHECK(c.tag >= TAG_NULL && c.tag <= TAG_SHA256);
        FUZZ_CHECK(inside(pos, 0, c.val, end) && pos == c.val + c.val_len);
        char text[80];
        memset(text, 'x', sizeof text);
        canon_value_text(&c, text, sizeof text);
        FUZZ_CHECK(memchr(text, '\0', sizeof text) != NULL);
    }
    return 0;
}
