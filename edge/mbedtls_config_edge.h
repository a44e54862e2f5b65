/* mbedTLS 2.28 configuration of the cross-built edge client (tools/deps.sh
 * installs it as the target's include/mbedtls/config.h, so libcoap, mbedTLS
 * and fedge are all compiled against the same structure layouts).
 *
 * What the edge needs and nothing else:
 *   - DTLS 1.2 client, pre-shared key, one cipher suite:
 *     TLS_PSK_WITH_AES_128_CCM_8 (RFC 7252's mandatory PSK suite for CoAP);
 *   - the envelope (shared/envelope.c, shared/crypto.c, shared/keys.c):
 *     AES-GCM, SHA-256, HMAC and HKDF through the MD layer;
 *   - CTR-DRBG seeded from the OS entropy source (libcoap's DTLS RNG).
 * No X.509, RSA, ECC, bignum, DTLS server, PSA, self tests or file I/O.
 * The host build (server programs) keeps Debian's full libmbedtls. */
#ifndef FEDGE_MBEDTLS_CONFIG_EDGE_H
#define FEDGE_MBEDTLS_CONFIG_EDGE_H

/* system support */
#define MBEDTLS_HAVE_ASM
#define MBEDTLS_HAVE_TIME
#define MBEDTLS_TIMING_C            /* DTLS retransmission timer (libcoap) */

/* primitives */
#define MBEDTLS_AES_C
#define MBEDTLS_AES_ROM_TABLES
#define MBEDTLS_AES_FEWER_TABLES
#define MBEDTLS_CCM_C               /* the DTLS record cipher */
#define MBEDTLS_GCM_C               /* the update envelope */
#define MBEDTLS_CIPHER_C
#define MBEDTLS_MD_C
#define MBEDTLS_SHA256_C
#define MBEDTLS_SHA256_SMALLER
#define MBEDTLS_HKDF_C
#define MBEDTLS_CTR_DRBG_C
#define MBEDTLS_ENTROPY_C
#define MBEDTLS_ENTROPY_FORCE_SHA256
#define MBEDTLS_ENTROPY_MAX_SOURCES 2 /* the OS (getrandom) and the timing source */

/* DTLS 1.2, client, PSK */
#define MBEDTLS_SSL_TLS_C
#define MBEDTLS_SSL_CLI_C
#define MBEDTLS_SSL_PROTO_TLS1_2
#define MBEDTLS_SSL_PROTO_DTLS
#define MBEDTLS_SSL_DTLS_ANTI_REPLAY
#define MBEDTLS_SSL_DTLS_BADMAC_LIMIT
#define MBEDTLS_SSL_EXTENDED_MASTER_SECRET
#define MBEDTLS_KEY_EXCHANGE_PSK_ENABLED
#define MBEDTLS_SSL_CIPHERSUITES MBEDTLS_TLS_PSK_WITH_AES_128_CCM_8
/* A record carries one CoAP message: libcoap over DTLS (this edge and the
 * aggregator) sends at most its 1152-byte MTU less the DTLS overhead (29)
 * and 4, i.e. a 1 KiB block with its header and options; PSK handshake
 * messages are far smaller. A larger record would be dropped. */
#define MBEDTLS_SSL_IN_CONTENT_LEN  1152
#define MBEDTLS_SSL_OUT_CONTENT_LEN 1152

/* libcoap logs mbedtls_strerror() (a stub here) and the version */
#define MBEDTLS_ERROR_STRERROR_DUMMY
#define MBEDTLS_VERSION_C

#include "mbedtls/check_config.h"

#endif
