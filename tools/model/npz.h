/* npz.h — NumPy .npz export: a zip archive (stored, no compression, CRC-32
 * from zlib) of one .npy (format 1.0, '<f4', C order) per parameter tensor,
 * named as in layers.h ("layers.0.weight.npy"), plus two 0-d unicode arrays
 * fedge.spec.npy and fedge.version.npy, so numpy.load(allow_pickle=False)
 * reads every entry. Archives over 4 GiB (zip64) are refused (FEDGE_ERR_RANGE). */
#ifndef FEDGE_MODEL_TOOL_NPZ_H
#define FEDGE_MODEL_TOOL_NPZ_H

#include <stddef.h>
#include <stdint.h>

#include "layers.h"

int mdl_npz_encode(const mdl_view *v, const float *params, const char *version_hex,
                   uint8_t **out, size_t *out_len);

#endif
