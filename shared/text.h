/* text.h — making untrusted strings safe for a terminal or a log line.
 *
 * Anything that came from a user, a peer or a database (device ids,
 * reasons, details, policy names) is escaped before it is printed: bytes
 * below 0x20, DEL, the C1 controls (U+0080..U+009F), the line and paragraph
 * separators and the bidirectional controls (U+200E, U+200F, U+202A..U+202E,
 * U+2066..U+2069), and every byte that is not part of valid UTF-8 become
 * "\xNN" per byte; a backslash becomes "\\". Valid printable UTF-8 is kept.
 * The result is one line that cannot move the cursor, clear the screen or
 * pose as another table row. */
#ifndef FEDGE_TEXT_H
#define FEDGE_TEXT_H

#include <stddef.h>
#include <stdio.h>

/* Escapes s[0..len) into out (always NUL-terminated when cap > 0). Returns
 * the length the full escaped text needs, without the NUL, as snprintf
 * does: a result >= cap means out holds a truncated prefix (never a partial
 * escape). At most 4 * len. */
size_t fedge_text_escape(const char *s, size_t len, char *out, size_t cap);

/* The escaped copy of NUL-terminated s, malloc'd; NULL when s is NULL or
 * memory runs out. */
char *fedge_text_escape_dup(const char *s);

/* 1 when s[0..len) is valid UTF-8 with nothing fedge_text_escape would
 * escape other than backslashes, 0 otherwise. For refusing input. */
int fedge_text_is_printable(const char *s, size_t len);

/* Writes "prog: MESSAGE\n" to stderr, the formatted message escaped as a
 * whole: for command-line errors that echo what the user typed. */
void fedge_text_eprintf(const char *prog, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
