/* model.h — feed-forward classifiers (dense, conv, pool) over one flat float32 buffer.
 *
 * Spec grammar (every accepted text is its own canonical form; anything else is
 * FEDGE_ERR_MODEL_SPEC and leaves *out untouched):
 *   softmax:IN-CLASSES                 one dense layer + softmax
 *   mlp:IN-H1-...-CLASSES              dense+ReLU hidden layers (at least one)
 *   cnn:CxHxW-TOK-...-CLASSES          tokens, left to right:
 *       c<out>k<k>[s<stride>][p<pad>]  conv2d (square kernel, zero padding, 2*pad <= k) + ReLU;
 *                                      s1 and p0 are the defaults and are never written
 *       p<k>[s<stride>]                max-pool k x k, stride k unless given (sN != k)
 *       f<n>                           dense n + ReLU (a flatten is implied before the first
 *                                      dense layer, f or classes)
 *       d<pct>                         dropout, rate pct/100, 1..99 (training only, seeded)
 *       <classes>                      the last token: dense to classes, then softmax
 *   e.g. cnn:1x28x28-c32k5-p2-c64k5-p2-f512-10,  cnn:1x28x28-c16k3p1-p2-f128-d25-10
 * Numbers are plain decimal (no sign, no leading zero), 1..FEDGE_MODEL_MAX_DIM; classes
 * 2..FEDGE_MODEL_MAX_CLASSES; no conv or pool after the flatten; at most
 * FEDGE_MODEL_MAX_LAYERS layers, FEDGE_MODEL_MAX_PARAMS parameters, FEDGE_MODEL_MAX_ACT
 * floats in any one sample's activation, and FEDGE_MODEL_SPEC_MAX - 1 characters.
 * Shapes: conv out = (in + 2*pad - k) / stride + 1 (must be >= 1, floor);
 * pool out = (in - k) / stride + 1 (must be >= 1, floor, no padding).
 *
 * Internally a spec is a list of layers. RELU and FLATTEN are layers of their own (so an
 * ONNX export maps one layer to one node); softmax is the loss/output, not a layer.
 * mlp:784-200-10 is DENSE(200) RELU DENSE(10); cnn:1x28x28-c8k3-p2-10 is
 * CONV2D(8) RELU MAXPOOL FLATTEN DENSE(10).
 *
 * Parameter layout: for each layer with parameters, in order, its weights then its bias:
 *   DENSE   W [out x in] row-major (in = flattened input size), b [out]
 *   CONV2D  W [out_c x in_c x k x k] (OIHW, the ONNX/PyTorch order), b [out_c]
 * (so the mlp/softmax layout and every existing model file is unchanged).
 * Activations between layers are per sample in C x H x W order (NCHW); FLATTEN keeps
 * that order (ONNX Flatten / torch.flatten semantics). Model input rows are C*H*W floats.
 *
 * The training step allocates nothing: the caller passes scratch sized by
 * fedge_model_scratch_floats(spec, batch). */
#ifndef FEDGE_MODEL_H
#define FEDGE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

#ifndef FEDGE_MODEL_MAX_LAYERS /* a microcontroller build sets fewer (mcu/): a spec is on its stack */
#define FEDGE_MODEL_MAX_LAYERS 32        /* entries in fedge_model_spec.layer (incl. relu/flatten) */
#endif
#define FEDGE_MODEL_MAX_DIM 65536        /* any feature count, channel count, H or W */
#define FEDGE_MODEL_SPEC_MAX 256         /* longest canonical spec string, with NUL */
#define FEDGE_MODEL_MAX_CLASSES 256      /* labels are uint8 */
#define FEDGE_MODEL_MAX_PARAMS (1u << 28) /* 1 GiB of float32; larger specs are refused */
#define FEDGE_MODEL_MAX_ACT (1 << 24)    /* floats in one sample's input or any activation */

typedef enum { FEDGE_MODEL_SOFTMAX = 1, FEDGE_MODEL_MLP = 2, FEDGE_MODEL_CNN = 3 } fedge_model_kind;

typedef enum {
    FEDGE_LAYER_DENSE = 1,
    FEDGE_LAYER_CONV2D = 2,
    FEDGE_LAYER_MAXPOOL = 3,
    FEDGE_LAYER_RELU = 4,
    FEDGE_LAYER_FLATTEN = 5,
    FEDGE_LAYER_DROPOUT = 6,
} fedge_layer_type;

typedef struct {
    fedge_layer_type type;
    int out;       /* DENSE: output features; CONV2D: output channels */
    int k;         /* CONV2D kernel, MAXPOOL window */
    int stride;    /* CONV2D, MAXPOOL */
    int pad;       /* CONV2D */
    int rate_pct;  /* DROPOUT */
    int in_c, in_h, in_w;    /* input shape; a flat vector of n features is n x 1 x 1 */
    int out_c, out_h, out_w; /* output shape */
    size_t w_off, b_off;     /* offsets into the flat parameters (valid when n_params > 0) */
    size_t n_params;         /* weights + bias; 0 for parameterless layers */
} fedge_layer;

typedef struct {
    fedge_model_kind kind;
    int in_c, in_h, in_w;  /* input shape (softmax/mlp: IN x 1 x 1) */
    int input_dim;         /* in_c * in_h * in_w: floats per input row */
    int classes;           /* outputs of the last layer */
    int n_layers;          /* entries used in layer[] */
    fedge_layer layer[FEDGE_MODEL_MAX_LAYERS];
    size_t n_params;
} fedge_model_spec;

int fedge_model_spec_parse(const char *text, fedge_model_spec *out);
/* Canonical text; FEDGE_ERR_BUFFER_TOO_SMALL if it does not fit, FEDGE_ERR_MODEL_SPEC for
 * a hand-built spec that is not what parsing its own text gives. */
int fedge_model_spec_format(const fedge_model_spec *spec, char *buf, size_t cap);
/* 0 for an invalid spec. */
size_t fedge_model_spec_param_count(const fedge_model_spec *spec);
/* 32-bit id of the canonical spec (first 4 bytes of its SHA-256, little-endian):
 * the delta wire format carries it so a delta for another shape is refused. 0 if invalid. */
uint32_t fedge_model_spec_id(const fedge_model_spec *spec);
/* 1 when the spec is a plain dense chain (softmax/mlp), filling dims[0..*n_dense]
 * (input, hidden widths, classes) — for code paths that only know dense layers
 * (e.g. a GPU backend); 0 otherwise. */
int fedge_model_spec_dense_dims(const fedge_model_spec *spec, int dims[FEDGE_MODEL_MAX_LAYERS + 1],
                                int *n_dense);
/* 1 when the spec has a dropout layer (its training steps need a dropout seed). */
int fedge_model_spec_has_dropout(const fedge_model_spec *spec);
/* Lower-case layer name ("dense", "conv2d", "maxpool", "relu", "flatten", "dropout"). */
const char *fedge_layer_name(fedge_layer_type type);
/* Multiply-accumulates of the layer's forward pass for one sample (its GEMM
 * work: dense and conv2d; 0 for the others). Backward costs one more such
 * product for the weights and, above the first such layer, one for the input. */
double fedge_layer_macs(const fedge_layer *l);

typedef struct {
    fedge_model_spec spec;
    size_t n_params;
    float *params;                       /* owned; n_params floats */
} fedge_model;

/* Allocates params (zeroed). fedge_model_free(NULL) and double free are safe. */
int fedge_model_init(fedge_model *m, const fedge_model_spec *spec);
void fedge_model_free(fedge_model *m);
/* The caller-buffer form (the freestanding core, mcu/, has no heap and no
 * fedge_model_init/free): m uses params (spec->n_params floats, left as they
 * are) without owning it; never pass such a model to fedge_model_free. */
int fedge_model_bind(fedge_model *m, const fedge_model_spec *spec, float *params);
/* He-uniform weights (fan_in = in for dense, in_c*k*k for conv), zero biases; the weights
 * are drawn layer by layer in parameter order. */
int fedge_model_randomize(fedge_model *m, fedge_rng *rng);

/* 0 for an invalid spec, batch < 1, or a batch whose buffers would not fit the indexing. */
size_t fedge_model_scratch_floats(const fedge_model_spec *spec, int batch);
/* The largest batch in 1..batch whose scratch is within the limit above (0 if
 * not even one row fits): how many rows a wide model can take per call. */
int fedge_model_max_batch(const fedge_model_spec *spec, int batch);
/* Scratch layouts are chosen at run time from the scratch a pass is given
 * (the _n calls' scratch_floats; the plain calls assume
 * fedge_model_scratch_floats, FULL): the fastest that fits, the GEMM's
 * blocking taking what is left. FULL: the GEMM's full blocking; SMALL_GEMM:
 * its least (1.5 KiB); LEAN: also no im2col matrix (a block of output
 * pixels at a time) and no output of a conv followed by a ReLU and a 2x2
 * pool (a tile of two rows and a few pooled columns at a time, recomputed
 * once in backward, its window positions kept in a 2-bit mask: about one
 * more conv forward pass); a conv larger than one gradient slice keeps its
 * weights and weight-gradient sums in blocks of output channels (the input
 * gradient first); blocks of about FEDGE_MODEL_LEAN_BLOCK (512) floats; the
 * input gradient of a conv above the fused first conv, when that one learns
 * in one block, streams a ring of input rows into the first conv's weight
 * gradient (whose slices then come before the upper conv's weights).
 * Every layout computes the same sums in the same order with the portable
 * GEMM (gemm.c): the same bits. With a BLAS, LEAN sums a conv's weight
 * gradient the portable kernel's way rather than the BLAS's (rounding).
 * PATCH (below LEAN; specs with a conv before the first dense layer): the
 * conv/pool chain walked in row bands of its last map, each band's
 * receptive field recomputed, into the first dense layer's sums; backward
 * over the same bands, the halo rows' input gradients in a window per map;
 * a conv followed by a max pool whose windows do not overlap computed inside
 * the pool (its map and gradient never held); a deep chain split at a map
 * kept whole, the two segments' buffers over the same floats; the band
 * height and the last conv's blocks from the budget
 * (model.c, "the patch layout"). Its sums run in another order than the
 * GEMM's: not the same bits (within 1e-5 of the largest gradient,
 * test_patch_layout_close).
 * _min: the least of the layouts; _fit: what a pass makes of a budget of
 * that many floats (the full size when it fits, else the budget, 0 below
 * _min). 0 for an invalid spec or layout (PATCH: a spec without a conv). */
typedef enum {
    FEDGE_SCRATCH_FULL = 0,
    FEDGE_SCRATCH_SMALL_GEMM = 1,
    FEDGE_SCRATCH_LEAN = 2,
    FEDGE_SCRATCH_PATCH = 3,
} fedge_scratch_layout;
size_t fedge_model_scratch_floats_layout(const fedge_model_spec *spec, int batch,
                                         fedge_scratch_layout layout);
size_t fedge_model_scratch_floats_min(const fedge_model_spec *spec, int batch);
size_t fedge_model_scratch_floats_fit(const fedge_model_spec *spec, int batch, size_t budget);

/* Inference (dropout is the identity). probs: batch x classes. */
int fedge_model_forward(const fedge_model *m, const float *x, int batch,
                        float *scratch, float *probs);
/* Mean cross-entropy loss over the batch and its gradient (same layout as params,
 * overwritten). Weight decay is not included (the optimizer adds it). dropout_seed picks
 * the dropout masks of this step (the same seed gives the same masks; models without
 * dropout ignore it). Element e of dropout layer l (e = b*C*H*W + c*H*W + h*W + w within
 * the batch) is kept when hash(seed, l, e) >= rate * 2^32, and scaled by 1 / (1 - rate). */
/* The gradient without a buffer for all of it: each parameter's gradient is
 * handed to sink(arg, offset, g, n) exactly once, in slices of at most
 * fedge_model_grad_chunk_floats(spec) floats passed through chunk (the
 * caller's buffer of that size; sink may change g). A slice comes after
 * everything that reads the parameters it covers (a conv layer's: its input
 * gradient, then a slice of whole output channels at a time, the biases
 * last; a dense layer's likewise, rows), so sink may step them in place
 * (a fused optimizer step: the same arithmetic as a whole gradient and a
 * step afterwards). A sink's error ends the pass and is returned; a
 * non-finite loss is FEDGE_ERR_MODEL_NONFINITE before any slice (*loss set). */
typedef int (*fedge_grad_sink)(void *arg, size_t off, float *g, size_t n);
#ifndef FEDGE_MODEL_GRAD_CHUNK /* a microcontroller build sets a smaller one (mcu/) */
#define FEDGE_MODEL_GRAD_CHUNK 4096 /* floats; larger when one dense row, one conv output channel's weights or one input row is */
#endif
size_t fedge_model_grad_chunk_floats(const fedge_model_spec *spec); /* 0: invalid spec */
int fedge_model_loss_grad_sliced(const fedge_model *m, const float *x, const uint8_t *y,
                                 int batch, uint64_t dropout_seed, float *scratch, float *chunk,
                                 fedge_grad_sink sink, void *sink_arg, float *loss);
/* The same from u8 features (input row j is x[j] * scale: what a u8 shard
 * reads as, shard.h), converted inside the first layer a block at a time (the
 * scratch holds the block, see fedge_model_scratch_floats), never the whole
 * minibatch as floats (unless the first layer is a pool or dropout). Each
 * sum runs over the same terms in the same order as from the float rows. */
int fedge_model_loss_grad_sliced_u8(const fedge_model *m, const uint8_t *x, float scale,
                                    const uint8_t *y, int batch, uint64_t dropout_seed,
                                    float *scratch, float *chunk, fedge_grad_sink sink,
                                    void *sink_arg, float *loss);
/* The same with a scratch of scratch_floats floats (at least
 * fedge_model_scratch_floats_min; FEDGE_ERR_BUFFER_TOO_SMALL below) and a
 * chunk of chunk_floats (0, or anything up to fedge_model_grad_chunk_floats:
 * that size; more: slices of up to chunk_floats, more dense rows per
 * product; the same bits). A pass in the patch layout takes a smaller chunk:
 * chunk_floats from fedge_model_grad_chunk_floats_fit (for that scratch) up
 * is its size (below: FEDGE_ERR_BUFFER_TOO_SMALL, nothing handed over);
 * given such a chunk, a pass whose rows would fit a faster layout in its
 * scratch takes the patch layout (a short last minibatch, say). */
size_t fedge_model_grad_chunk_floats_fit(const fedge_model_spec *spec, int batch, size_t scratch_floats);
/* The patch layout's least chunk (0: the spec has no patch layout). */
size_t fedge_model_grad_chunk_floats_patch(const fedge_model_spec *spec);
int fedge_model_loss_grad_sliced_n(const fedge_model *m, const float *x, const uint8_t *y,
                                   int batch, uint64_t dropout_seed, float *scratch,
                                   size_t scratch_floats, float *chunk, size_t chunk_floats,
                                   fedge_grad_sink sink, void *sink_arg, float *loss);
int fedge_model_loss_grad_sliced_u8_n(const fedge_model *m, const uint8_t *x, float scale,
                                      const uint8_t *y, int batch, uint64_t dropout_seed,
                                      float *scratch, size_t scratch_floats, float *chunk,
                                      size_t chunk_floats, fedge_grad_sink sink, void *sink_arg,
                                      float *loss);
int fedge_model_loss_grad(const fedge_model *m, const float *x, const uint8_t *y,
                          int batch, uint64_t dropout_seed, float *scratch, float *grad,
                          float *loss);
/* Number of correct argmax predictions and summed loss over n rows, in
 * chunks of at most `batch` rows using scratch sized for `batch`. */
int fedge_model_evaluate(const fedge_model *m, const float *x, const uint8_t *y,
                         size_t n, int batch, float *scratch, size_t *n_correct,
                         double *loss_sum);
int fedge_model_evaluate_n(const fedge_model *m, const float *x, const uint8_t *y, size_t n,
                           int batch, float *scratch, size_t scratch_floats, size_t *n_correct,
                           double *loss_sum);

/* C[M x N] = alpha * op(A) * op(B) + beta * C, row-major, op = transpose when
 * the flag is set. The one GEMM used by the CPU paths (see gemm.c / blas). */
void fedge_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
                 const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc);
/* The same with the caller's scratch ws of fedge_gemm_scratch_bytes(M, N, K)
 * bytes (float-aligned): what the portable kernel packs into, nothing with a
 * BLAS (the query says 0 and ws may be NULL). The model's passes use it, so
 * the model scratch (fedge_model_scratch_floats) holds the GEMM's. */
size_t fedge_gemm_scratch_bytes(int M, int N, int K);
/* The least scratch the portable kernel works in (one MR- and one NR-wide
 * panel, 32 deep: 1.5 KiB); 0 with a BLAS. */
size_t fedge_gemm_scratch_min_bytes(int M, int N, int K);
/* fedge_sgemm_ws with a scratch of ws_bytes, anywhere from the min to the
 * full size: the portable kernel picks the largest blocks that fit (the same
 * bits whatever it picks: K is sliced alike). FEDGE_ERR_BUFFER_TOO_SMALL
 * (C untouched) below the min. */
int fedge_sgemm_wsn(int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc, float *ws, size_t ws_bytes);
void fedge_sgemm_ws(int trans_a, int trans_b, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta,
                    float *C, int ldc, float *ws);

#endif
