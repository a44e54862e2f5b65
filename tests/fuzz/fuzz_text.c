/* fuzz_text.c — escaping untrusted text for logs and terminals
 * (shared/text.h), which every log line goes through.
 *
 * Input: one byte that sets a small output capacity, then the text.
 * Invariants: the escaped text is printable (one line, no control), at most
 * 4 bytes per input byte, and unescapes to exactly the input; a truncated
 * result is a printable prefix of the full one; printable input without a
 * backslash comes out unchanged. */
#include "fuzz_util.h"
#include "text.h"

static int hex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size < 1)
        return 0;
    size_t small = data[0];
    const char *s = (const char *)data + 1;
    size_t len = size - 1;

    size_t need = fedge_text_escape(s, len, NULL, 0);
    FUZZ_CHECK(need <= 4 * len);
    char *out = malloc(need + 1);
    FUZZ_CHECK(out != NULL);
    FUZZ_CHECK(fedge_text_escape(s, len, out, need + 1) == need);
    FUZZ_CHECK(strlen(out) == need);
    FUZZ_CHECK(fedge_text_is_printable(out, need));

    /* unescape: "\\" and "\xNN" are the only escapes */
    char *back = malloc(len + 1);
    FUZZ_CHECK(back != NULL);
    size_t j = 0;
    for (size_t i = 0; i < need; i++) {
        FUZZ_CHECK(j < len);
        if (out[i] != '\\') {
            back[j++] = out[i];
            continue;
        }
        FUZZ_CHECK(i + 1 < need);
        if (out[i + 1] == '\\') {
            back[j++] = '\\';
            i++;
            continue;
        }
        FUZZ_CHECK(out[i + 1] == 'x' && i + 3 < need && hex(out[i + 2]) >= 0 && hex(out[i + 3]) >= 0);
        back[j++] = (char)(hex(out[i + 2]) << 4 | hex(out[i + 3]));
        i += 3;
    }
    FUZZ_CHECK(j == len && memcmp(back, s, len) == 0);
    if (fedge_text_is_printable(s, len) && memchr(s, '\\', len) == NULL)
        FUZZ_CHECK(need == len && memcmp(out, s, len) == 0);

    char *cut = malloc(small + 1);
    FUZZ_CHECK(cut != NULL);
    FUZZ_CHECK(fedge_text_escape(s, len, cut, small + 1) == need);
    size_t cut_len = strlen(cut);
    FUZZ_CHECK(cut_len <= small && cut_len <= need && memcmp(cut, out, cut_len) == 0);
    FUZZ_CHECK(fedge_text_is_printable(cut, cut_len));
    free(cut);
    free(back);
    free(out);
    return 0;
}
