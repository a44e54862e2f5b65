/* fuzz_keys_event.c — a keys ledger entry's detail (policy/audit.h "the keys
 * ledger"), as the daemon's start-up check, fedge-audit verify and report
 * parse it from a log that may have been edited.
 *
 * Input: the detail text (inputs holding a NUL are skipped: SQLite's text
 * reaches the parser NUL-terminated). Invariants: parse either refuses
 * (FEDGE_ERR_AUDIT_CHAIN) or gives an entry that formats back, with the path
 * it named, to exactly the input. */
#include "audit.h"
#include "error.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_quiet();
    if (size > 8192 || memchr(data, 0, size))
        return 0;
    char *detail = malloc(size + 1), *back = malloc(size + 1);
    FUZZ_CHECK(detail && back);
    memcpy(detail, data, size);
    detail[size] = '\0';
    fedge_keys_event ev;
    int rc = fedge_audit_keys_event_parse(detail, &ev);
    if (rc != FEDGE_OK) {
        FUZZ_CHECK(rc == FEDGE_ERR_AUDIT_CHAIN);
    } else {
        /* the path: after the first "; keys file " (region, key id and
         * source hold no space), up to the closing ')' */
        const char *p = strstr(detail, "; keys file ");
        FUZZ_CHECK(p && size >= 1 && detail[size - 1] == ')');
        p += strlen("; keys file ");
        char *path = strndup(p, (size_t)(detail + size - 1 - p));
        FUZZ_CHECK(path);
        FUZZ_CHECK(fedge_audit_keys_event_format(&ev, path, back, size + 1) == FEDGE_OK);
        FUZZ_CHECK(strcmp(back, detail) == 0);
        free(path);
    }
    free(detail);
    free(back);
    return 0;
}
