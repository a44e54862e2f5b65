/* text.c — escaping untrusted strings for terminals and logs (see text.h). */
#include "text.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when the bytes at s
 * do not start one (stray continuation, overlong form, surrogate, beyond
 * U+10FFFF, truncated). *cp receives the code point. */
static size_t utf8_seq(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        v = c & 0x1F;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        v = c & 0x0F;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        v = c & 0x07;
        min = 0x10000;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return n;
}

static int escaped_code_point(uint32_t cp)
{
    return cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F) || cp == 0x200E ||
           cp == 0x200F || (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

size_t fedge_text_escape(const char *s, size_t len, char *out, size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t need = 0, at = 0;
    int full = cap == 0;
    for (size_t i = 0; p && i < len;) {
        uint32_t cp = 0;
        size_t n = utf8_seq(p + i, len - i, &cp);
        char piece[16];
        size_t k = 0;
        if (n == 0 || escaped_code_point(cp)) {
            size_t bytes = n ? n : 1;
            for (size_t b = 0; b < bytes; b++) {
                piece[k++] = '\\';
                piece[k++] = 'x';
                piece[k++] = digits[p[i + b] >> 4];
                piece[k++] = digits[p[i + b] & 15];
            }
            n = bytes;
        } else if (cp == '\\') {
            piece[k++] = '\\';
            piece[k++] = '\\';
        } else {
            for (size_t b = 0; b < n; b++)
                piece[k++] = (char)p[i + b];
        }
        if (!full && at + k < cap) {
            for (size_t b = 0; b < k; b++)
                out[at++] = piece[b];
        } else {
            full = 1;
        }
        need += k;
        i += n;
    }
    if (cap > 0)
        out[at] = '\0';
    return need;
}

char *fedge_text_escape_dup(const char *s)
{
    if (!s)
        return NULL;
    size_t len = 0;
    while (s[len])
        len++;
    size_t need = fedge_text_escape(s, len, NULL, 0);
    char *out = malloc(need + 1);
    if (out)
        fedge_text_escape(s, len, out, need + 1);
    return out;
}

int fedge_text_is_printable(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        uint32_t cp = 0;
        size_t n = utf8_seq(p + i, len - i, &cp);
        if (n == 0 || escaped_code_point(cp))
            return 0;
        i += n;
    }
    return 1;
}

void fedge_text_eprintf(const char *prog, const char *fmt, ...)
{
    char msg[1024], safe[4 * sizeof msg];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        msg[0] = '\0';
    fedge_text_escape(msg, strlen(msg), safe, sizeof safe);
    fprintf(stderr, "%s: %s\n", prog, safe);
}
