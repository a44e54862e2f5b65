/* mbedTLS 2.28 configuration of the bare-metal Cortex-M core (mcu/): the
 * update envelope only (shared/envelope.c, shared/crypto.c): AES-256-GCM,
 * SHA-256, and HMAC/HKDF through the MD layer for the key id and the device
 * key. No platform entropy, clock, network, file system, heap or threads:
 * randomness comes from the board's hook (mcu/core.h). Every mcu/ unit and
 * every mbedTLS source of the firmware is compiled with
 * -DMBEDTLS_CONFIG_FILE='"mbedtls_config_mcu.h"', so the structure layouts
 * agree. */
#ifndef FEDGE_MBEDTLS_CONFIG_MCU_H
#define FEDGE_MBEDTLS_CONFIG_MCU_H

#define MBEDTLS_NO_PLATFORM_ENTROPY

#define MBEDTLS_AES_C
#define MBEDTLS_AES_ROM_TABLES   /* the tables in flash, not built in RAM */
#define MBEDTLS_AES_FEWER_TABLES
#define MBEDTLS_GCM_C
#define MBEDTLS_CIPHER_C
#define MBEDTLS_MD_C
#define MBEDTLS_SHA256_C
#define MBEDTLS_SHA256_SMALLER
#define MBEDTLS_HKDF_C

/* no heap: mbedtls_calloc draws from a static pool the board hands over
 * (mbedtls_memory_buffer_alloc_init, FEDGE_CORE_CRYPTO_POOL bytes); the
 * defaults before that fail instead of reaching libc's malloc */
#include <stddef.h>
void *fedge_mcu_no_calloc(size_t n, size_t size);
void fedge_mcu_no_free(void *p);
void fedge_mcu_abort(int status); /* the pool allocator's exit on a corrupted pool */
#define MBEDTLS_PLATFORM_C
#define MBEDTLS_PLATFORM_MEMORY
#define MBEDTLS_PLATFORM_NO_STD_FUNCTIONS
#define MBEDTLS_PLATFORM_STD_CALLOC fedge_mcu_no_calloc
#define MBEDTLS_PLATFORM_STD_FREE fedge_mcu_no_free
#define MBEDTLS_PLATFORM_EXIT_MACRO fedge_mcu_abort
#define MBEDTLS_MEMORY_BUFFER_ALLOC_C
#define MBEDTLS_MEMORY_ALIGN_MULTIPLE 8

#include "mbedtls/check_config.h"

#endif
