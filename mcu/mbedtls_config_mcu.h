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

#include "mbedtls/check_config.h"

#endif
