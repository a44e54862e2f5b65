/* board_mps2.c — the test board: QEMU's mps2-an386 (Cortex-M4F), start-up,
 * semihosting (ARM's "Semihosting for AArch32 and AArch64": SYS_WRITE0,
 * SYS_CLOCK, SYS_EXIT through bkpt 0xAB) for output, clock and exit status,
 * and the round: fedge_core on round_data.h's inputs, the sealed frame
 * printed in hex, then the memory figures.
 *
 * Output lines (the host's tests/tools/mcu_round.c check reads them):
 *   mcu spec=S batch=B steps=K loss0=L lossK=L train_us=T
 *   mcu plan params=.. velocity=.. chunk=.. scratch=.. stream=.. total=..
 *   mcu ram data=.. bss=.. block=.. stack=.. total=.. [budget=..]
 * A round whose RAM (data + bss + the core's block + MCU_STACK_RESERVE) is
 * over mcu_ram_bytes is refused before it starts:
 *   mcu refused: RAM ... (what it needs, what momentum 0 would need)
 *   mcu error -7 buffer too small
 *   frame HEX...
 *   mcu ok
 * The emulated board has no TRNG: its random hook is splitmix64 from a fixed
 * seed (a real board wires its TRNG; the nonce's uniqueness comes from the
 * counter, its 4 random bytes only spread it). */
#include <stdint.h>
#include <string.h>

#include <mbedtls/memory_buffer_alloc.h>

#include "common.h"
#include "core.h"
#include "round_data.h"

/* ---- semihosting ---------------------------------------------------------- */

#define SYS_WRITE0 0x04
#define SYS_CLOCK 0x10
#define SYS_EXIT 0x18
#define ADP_STOPPED_APPLICATION_EXIT 0x20026
#define ADP_STOPPED_RUNTIME_ERROR 0x20023

static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static void put(const char *s)
{
    semihost(SYS_WRITE0, s);
}

static void put_u(const char *label, uint64_t v)
{
    char buf[24];
    size_t i = sizeof buf;
    buf[--i] = '\0';
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    put(label);
    put(buf + i);
}

/* a non-negative float with 6 decimals */
static void put_f(const char *label, float f)
{
    if (!(f >= 0.0f) || f > 4e9f) {
        put(label);
        put("nan");
        return;
    }
    uint64_t micro = (uint64_t)((double)f * 1e6 + 0.5);
    put_u(label, micro / 1000000);
    char frac[8] = ".000000";
    uint32_t r = (uint32_t)(micro % 1000000);
    for (int i = 6; i >= 1; i--) {
        frac[i] = (char)('0' + r % 10);
        r /= 10;
    }
    put(frac);
}

static void __attribute__((noreturn)) board_exit(int ok)
{
    semihost(SYS_EXIT, (const void *)(uintptr_t)(ok ? ADP_STOPPED_APPLICATION_EXIT
                                                    : ADP_STOPPED_RUNTIME_ERROR));
    for (;;)
        ;
}

/* ---- platform hooks --------------------------------------------------------- */

static uint64_t board_now_us(void *ctx)
{
    (void)ctx;
    return (uint64_t)(uint32_t)semihost(SYS_CLOCK, NULL) * 10000u; /* centiseconds */
}

static int board_random(void *ctx, uint8_t *out, size_t len)
{
    uint64_t *state = ctx;
    for (size_t i = 0; i < len; i++) {
        uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        out[i] = (uint8_t)(z ^ (z >> 31));
    }
    return 0;
}

/* mbedTLS's default allocator until mbedtls_memory_buffer_alloc_init replaces
 * it (mbedtls_config_mcu.h): there is no heap */
void *fedge_mcu_no_calloc(size_t n, size_t size)
{
    (void)n;
    (void)size;
    return NULL;
}

void fedge_mcu_no_free(void *p)
{
    (void)p;
}

void fedge_mcu_abort(int status)
{
    (void)status;
    put("mcu abort\n");
    board_exit(0);
}

/* ---- the round ---------------------------------------------------------------- */

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern uint32_t __stack_bottom[], __stack_top[];
extern uint8_t __arena_start[], __arena_end[];
#define STACK_PAINT 0xa5a5a5a5u

/* the stack a budgeted round may use (the measured peak is ~4.1 KB) */
#define MCU_STACK_RESERVE 6144u

static unsigned char crypto_pool[FEDGE_CORE_CRYPTO_POOL] __attribute__((aligned(8)));

static size_t stack_peak(void)
{
    const uint32_t *p = __stack_bottom;
    while (p < __stack_top && *p == STACK_PAINT)
        p++;
    return (size_t)((const uint8_t *)__stack_top - (const uint8_t *)p);
}

static int run(void)
{
    int ret = FEDGE_OK;
    fedge_update_stream *stream = NULL;
    fedge_device_key key;
    memset(&key, 0, sizeof key);
    mbedtls_memory_buffer_alloc_init(crypto_pool, sizeof crypto_pool);

    fedge_model_spec spec;
    CHK(fedge_model_spec_parse(mcu_spec, &spec));
    fedge_sgd_config cfg = {mcu_lr, mcu_momentum, mcu_weight_decay};
    static uint64_t random_state = 0x6d63752d626f6172ull;
    fedge_platform pf = {board_random, board_now_us, &random_state};
    fedge_core_plan plan;
    CHK(fedge_core_plan_bytes(&spec, mcu_batch, &cfg, (fedge_encoding)mcu_encoding, &plan));
    size_t data = (size_t)((uint8_t *)__data_end - (uint8_t *)__data_start);
    size_t bss = (size_t)((uint8_t *)__bss_end - (uint8_t *)__bss_start);
    size_t block = (size_t)(__arena_end - __arena_start);
    if (mcu_ram_bytes) {
        /* the device's RAM, not the emulated board's: a plan over it is
         * refused before the round, with what would fit */
        size_t fixed = data + bss + MCU_STACK_RESERVE;
        if (fixed > mcu_ram_bytes || plan.total > mcu_ram_bytes - fixed) {
            fedge_sgd_config plain = cfg;
            plain.momentum = 0.0f;
            fedge_core_plan p0;
            CHK(fedge_core_plan_bytes(&spec, mcu_batch, &plain, (fedge_encoding)mcu_encoding, &p0));
            put_u("mcu refused: RAM needed ", fixed + plan.total);
            put_u(" B (data+bss ", data + bss);
            put_u(" + stack reserve ", MCU_STACK_RESERVE);
            put_u(" + block ", plan.total);
            put_u(", of which velocity ", plan.velocity);
            put_u(") > the device's ", mcu_ram_bytes);
            put_u(" B; at momentum 0 it needs ", fixed + p0.total);
            put(" B\n");
            FAIL(FEDGE_ERR_BUFFER_TOO_SMALL);
        }
        if (block > mcu_ram_bytes - fixed)
            block = mcu_ram_bytes - fixed;
    }
    fedge_core core;
    CHK(fedge_core_init(&core, &spec, mcu_batch, &cfg, (fedge_encoding)mcu_encoding, &pf,
                        __arena_start, block));
    CHK(fedge_envelope_derive_key(mcu_secret, mcu_secret_len, mcu_device_id, &key));

    CHK(fedge_core_begin(&core, mcu_global, mcu_global_len));
    float loss0 = 0.0f, loss = 0.0f;
    const size_t dim = (size_t)spec.input_dim;
    for (int s = 0; s < mcu_steps; s++) {
        size_t row = (size_t)s * (size_t)mcu_batch;
        if (row > mcu_y_len || row > mcu_x_len / dim)
            FAIL(FEDGE_ERR_BUFFER_TOO_SMALL); /* fewer rows than steps x batch */
        CHK(fedge_core_step_u8(&core, mcu_x + row * dim, mcu_x_len - row * dim, 1.0f / 255.0f,
                               mcu_y + row, mcu_y_len - row, mcu_batch, &loss));
        if (s == 0)
            loss0 = loss;
    }
    fedge_core_update u = {&key, mcu_counter, mcu_run_id, mcu_round, mcu_base_version};
    CHK(fedge_core_seal(&core, mcu_global, mcu_global_len, &u, &stream));

    put("mcu spec=");
    put(mcu_spec);
    put_u(" batch=", (uint64_t)mcu_batch);
    put_u(" steps=", core.steps);
    put_f(" loss0=", loss0);
    put_f(" lossK=", loss);
    put_u(" train_us=", core.train_us);
    put("\n");

    put("frame ");
    size_t size = fedge_update_stream_size(stream);
    for (size_t off = 0; off < size;) {
        uint8_t bytes[96];
        char hex[2 * sizeof bytes + 1];
        size_t n = size - off < sizeof bytes ? size - off : sizeof bytes;
        CHK(fedge_update_stream_read(stream, off, bytes, n));
        fedge_hex_encode(bytes, n, hex);
        put(hex);
        off += n;
    }
    put("\n");

    put_u("mcu plan params=", plan.params);
    put_u(" velocity=", plan.velocity);
    put_u(" chunk=", plan.chunk);
    put_u(" scratch=", plan.scratch);
    put_u(" stream=", plan.stream);
    put_u(" total=", plan.total);
    put("\n");
    size_t stack = stack_peak();
    put_u("mcu ram data=", data);
    put_u(" bss=", bss);
    put_u(" block=", plan.total);
    put_u(" stack=", stack);
    put_u(" total=", data + bss + plan.total + stack);
    if (mcu_ram_bytes)
        put_u(" budget=", mcu_ram_bytes);
    put("\n");
    if (mcu_ram_bytes && stack > MCU_STACK_RESERVE) {
        put_u("mcu refused: the stack peaked at ", stack);
        put_u(" B, over its reserve of ", MCU_STACK_RESERVE);
        put(" B\n");
        FAIL(FEDGE_ERR_BUFFER_TOO_SMALL);
    }
cleanup:
    fedge_update_stream_wipe(stream);
    fedge_device_key_wipe(&key);
    if (ret != FEDGE_OK) {
        put(ret < 0 ? "mcu error -" : "mcu error ");
        put_u("", ret < 0 ? (uint64_t)(-(int64_t)ret) : (uint64_t)ret);
        put(" ");
        put(fedge_strerror(ret));
        put("\n");
    }
    return ret;
}

int main(void)
{
    int ret = run();
    if (ret == FEDGE_OK)
        put("mcu ok\n");
    return ret;
}

/* ---- start-up --------------------------------------------------------------------- */

void reset_handler(void)
{
    /* the FPU (CP10, CP11) before any floating-point instruction */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
    for (uint32_t *s = __data_load, *d = __data_start; d < __data_end;)
        *d++ = *s++;
    for (uint32_t *d = __bss_start; d < __bss_end;)
        *d++ = 0;
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *p = __stack_bottom; p < sp - 16;)
        *p++ = STACK_PAINT;
    board_exit(main() == 0);
}

static void fault_handler(void)
{
    put("mcu fault\n");
    board_exit(0);
}

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))__stack_top, reset_handler, fault_handler, fault_handler, fault_handler,
    fault_handler, fault_handler, 0, 0, 0, 0, fault_handler, fault_handler, 0, fault_handler,
    fault_handler,
};
