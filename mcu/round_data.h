/* round_data.h — the inputs of the test round the firmware runs, generated at
 * build time by the host (tests/tools/mcu_round.c gen): a model spec, its
 * global model, steps x batch Fashion-MNIST rows (u8 pixels as the IDX file
 * stores them; the features are pixel * (1/255), as fedge_dataset_load_idx
 * gives them) and their labels, the optimizer, the
 * device's secret and id, and the run the update is for. All const: in flash. */
#ifndef FEDGE_MCU_ROUND_DATA_H
#define FEDGE_MCU_ROUND_DATA_H

#include <stddef.h>
#include <stdint.h>

extern const char mcu_spec[];
extern const int mcu_batch, mcu_steps, mcu_encoding;
extern const float mcu_lr, mcu_momentum, mcu_weight_decay;
extern const float mcu_global[];
extern const uint8_t mcu_x[]; /* mcu_steps * mcu_batch rows of pixels, as stored; feature = pixel / 255 */
extern const uint8_t mcu_y[];
extern const uint8_t mcu_secret[];
extern const size_t mcu_secret_len;
extern const char mcu_device_id[];
extern const uint8_t mcu_run_id[16];
extern const uint8_t mcu_base_version[32];
extern const uint32_t mcu_round;
extern const uint64_t mcu_counter;
/* what mcu_global, mcu_x and mcu_y hold (floats, bytes, bytes: sizeof each) */
extern const size_t mcu_global_len, mcu_x_len, mcu_y_len;
/* the device's RAM (bytes) the firmware must fit: .data + .bss + the core's
 * block + MCU_STACK_RESERVE; 0: the board's (mcu.mk's MCU_RAM_<name>) */
extern const size_t mcu_ram_bytes;

#endif
