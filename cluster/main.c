/* fedge-cluster — data-, tensor- and pipeline-parallel refinement of a fedge model.
 *
 *   mpirun -np N fedge-cluster refine --model IN --data TRAIN.shard --out OUT [...]
 *   fedge-cluster reference --model IN --data TRAIN.shard --out OUT [...]
 *   fedge-cluster compare A.bin B.bin [--tol 1e-5]
 *   fedge-cluster init --spec mlp:784-64-10 --seed 1 --out MODEL
 *   fedge-cluster make-shard (--fashion-mnist train|test | --synthetic N) --out FILE
 *   fedge-cluster memory --spec SPEC --batch B [--backend gpu --precision bf16]
 *   mpirun -np N fedge-cluster plan --spec SPEC --batch B [--memory-per-rank-mb X]
 *
 * refine prints one JSON line on stdout (rank 0) and exits 0 on success,
 * 1 when the run failed, 2 on a usage error. See docs/CLUSTER.md. */
#include <getopt.h>
#include <sched.h>
#include <inttypes.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blas.h"
#include "cluster_backend.h"
#include "common.h"
#include "dataset.h"
#include "cluster_layout.h"
#include "cluster_loader.h"
#include "cluster_plan.h"
#include "cluster_plan_model.h"
#include "log.h"
#include "model.h"
#include "modelfile.h"
#include "optim.h"
#include "rng.h"
#include "shard.h"
#include "cluster_synth.h"
#include "cluster_trainer.h"
#include "version.h"
#include "text.h"

enum { EXIT_OK = 0, EXIT_RUN = 1, EXIT_USAGE = 2 };

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fedge-cluster COMMAND [options]\n"
            "  refine     --model IN --data TRAIN.shard --out OUT [--steps N | --epochs E]\n"
            "             [--batch B] [--lr X] [--momentum X] [--weight-decay X] [--seed S]\n"
            "             [--backend cpu|gpu] [--precision fp32|bf16|fp16] [--zero]\n"
            "             [--bucket-mb X] [--checkpoint-dir DIR] [--checkpoint-every K]\n"
            "             [--checkpoint-keep N] [--eval TEST.shard] [--summary FILE]\n"
            "             [--loss-scale X] [--loss-scale-window N] [--no-prefetch]\n"
            "             [--log-every N] [--log-level L] [--fail-at-step S [--fail-rank R]]\n"
            "             [--tp T] [--pp P] [--micro-batches M] [--pp-schedule gpipe|1f1b]\n"
            "             [--gpu-comm nccl|mpi]\n"
            "             [--layout auto] [--memory-per-rank-mb X]\n"
            "             [--lr-scaling none|linear] [--warmup-steps N] [--lr-base-batch B0]\n"
            "             (run under mpirun -np N; the batch B is global; dp = N / (T * P))\n"
            "  reference  --model IN --data TRAIN.shard --out OUT [--steps N | --epochs E]\n"
            "             [--batch B] [--lr X] [--momentum X] [--weight-decay X] [--seed S]\n"
            "             [--lr-scaling linear --warmup-steps N --lr-base-batch B0]\n"
            "             single process, the shared core's loss_grad and SGD (for tests)\n"
            "  compare    A.bin B.bin [--tol X]   relative L2 difference, exit 0 if <= tol\n"
            "  init       --spec SPEC --out FILE [--seed S]\n"
            "  make-shard (--fashion-mnist train|test [--rows N] | --synthetic N [--dim D]\n"
            "             [--classes C]) --out FILE [--f32] [--seed S]\n"
            "  memory     --spec SPEC --batch B [--backend cpu|gpu] [--precision P]\n"
            "  plan       --spec SPEC --batch B [--ranks N] [--memory-per-rank-mb X]\n"
            "             probe this machine (run under mpirun -np N), predict every DPxTPxPP\n"
            "             layout's step time and memory, choose the fastest that fits\n"
            "  --version  print the version and exit\n");
}

/* ---- argument helpers --------------------------------------------------- */

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (s == NULL || *s == 0 || *s == '-')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != 0)
        return -1;
    *out = v;
    return 0;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    uint64_t v;
    if (parse_u64(s, &v) != 0 || v < (uint64_t)lo || v > (uint64_t)hi)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    if (s == NULL || *s == 0)
        return -1;
    double v = strtod(s, &end);
    if (*end != 0 || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

static int bad_value(const char *opt, const char *val)
{
    fedge_text_eprintf("fedge-cluster", "bad value for --%s: '%s'", opt, val ? val : "");
    return EXIT_USAGE;
}

/* JSON string body with the characters that need it escaped. */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; p && *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

/* ---- refine ------------------------------------------------------------- */

enum {
    OPT_MODEL = 1000, OPT_DATA, OPT_OUT, OPT_STEPS, OPT_EPOCHS, OPT_BATCH, OPT_LR, OPT_MOM,
    OPT_WD, OPT_SEED, OPT_BACKEND, OPT_PREC, OPT_ZERO, OPT_BUCKET, OPT_CKDIR, OPT_CKEVERY,
    OPT_CKKEEP, OPT_EVAL, OPT_SUMMARY, OPT_LSCALE, OPT_LSWIN, OPT_NOPREFETCH, OPT_LOGEVERY,
    OPT_LOGLEVEL, OPT_FAILSTEP, OPT_FAILRANK, OPT_TOL, OPT_SPEC, OPT_FMNIST, OPT_SYNTH,
    OPT_ROWS, OPT_DIM, OPT_CLASSES, OPT_F32, OPT_NOZERO, OPT_HELP, OPT_TP, OPT_PP, OPT_MICRO,
    OPT_SCHED, OPT_GPUCOMM, OPT_MEMMB, OPT_LRSCALE, OPT_WARMUP, OPT_LRBASE, OPT_LAYOUT, OPT_RANKS
};

static const struct option train_opts[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"data", required_argument, NULL, OPT_DATA},
    {"out", required_argument, NULL, OPT_OUT},
    {"steps", required_argument, NULL, OPT_STEPS},
    {"epochs", required_argument, NULL, OPT_EPOCHS},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"lr", required_argument, NULL, OPT_LR},
    {"momentum", required_argument, NULL, OPT_MOM},
    {"weight-decay", required_argument, NULL, OPT_WD},
    {"seed", required_argument, NULL, OPT_SEED},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"precision", required_argument, NULL, OPT_PREC},
    {"zero", no_argument, NULL, OPT_ZERO},
    {"no-zero", no_argument, NULL, OPT_NOZERO},
    {"bucket-mb", required_argument, NULL, OPT_BUCKET},
    {"checkpoint-dir", required_argument, NULL, OPT_CKDIR},
    {"checkpoint-every", required_argument, NULL, OPT_CKEVERY},
    {"checkpoint-keep", required_argument, NULL, OPT_CKKEEP},
    {"eval", required_argument, NULL, OPT_EVAL},
    {"summary", required_argument, NULL, OPT_SUMMARY},
    {"loss-scale", required_argument, NULL, OPT_LSCALE},
    {"loss-scale-window", required_argument, NULL, OPT_LSWIN},
    {"no-prefetch", no_argument, NULL, OPT_NOPREFETCH},
    {"log-every", required_argument, NULL, OPT_LOGEVERY},
    {"log-level", required_argument, NULL, OPT_LOGLEVEL},
    {"fail-at-step", required_argument, NULL, OPT_FAILSTEP},
    {"fail-rank", required_argument, NULL, OPT_FAILRANK},
    {"help", no_argument, NULL, OPT_HELP},
    {"tp", required_argument, NULL, OPT_TP},
    {"pp", required_argument, NULL, OPT_PP},
    {"micro-batches", required_argument, NULL, OPT_MICRO},
    {"pp-schedule", required_argument, NULL, OPT_SCHED},
    {"gpu-comm", required_argument, NULL, OPT_GPUCOMM},
    {"memory-per-rank-mb", required_argument, NULL, OPT_MEMMB},
    {"lr-scaling", required_argument, NULL, OPT_LRSCALE},
    {"warmup-steps", required_argument, NULL, OPT_WARMUP},
    {"lr-base-batch", required_argument, NULL, OPT_LRBASE},
    {"layout", required_argument, NULL, OPT_LAYOUT},
    {NULL, 0, NULL, 0},
};

typedef struct {
    fedge_refine_config cfg;
    int layout_auto;
    const char *summary_path;
    int steps_given, epochs_given;
} refine_args;

/* Returns EXIT_OK or EXIT_USAGE (message printed when `loud`). */
static int parse_train_args(int argc, char **argv, refine_args *a, int loud)
{
    fedge_refine_config *c = &a->cfg;
    double d;
    uint64_t u;
    int opt, i;
    fedge_log_level lvl;
    FILE *saved = stderr;
    opterr = 0; /* getopt would echo a bad option raw: it is reported below, escaped */
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", train_opts, NULL)) != -1) {
        const char *v = optarg;
        const char *name = "";
        for (const struct option *o = train_opts; o->name; o++)
            if (o->val == opt)
                name = o->name;
        switch (opt) {
        case OPT_MODEL: c->model_in = v; break;
        case OPT_DATA: c->data_path = v; break;
        case OPT_OUT: c->model_out = v; break;
        case OPT_STEPS:
            if (parse_u64(v, &c->steps) != 0 || c->steps == 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            a->steps_given = 1;
            break;
        case OPT_EPOCHS:
            if (parse_double(v, &c->epochs) != 0 || !(c->epochs > 0))
                return loud ? bad_value(name, v) : EXIT_USAGE;
            a->epochs_given = 1;
            break;
        case OPT_BATCH:
            if (parse_int(v, 1, 1 << 24, &c->global_batch) != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_LR:
        case OPT_MOM:
        case OPT_WD:
            if (parse_double(v, &d) != 0 || d < 0 || (opt == OPT_MOM && d >= 1.0))
                return loud ? bad_value(name, v) : EXIT_USAGE;
            if (opt == OPT_LR)
                c->sgd.lr = (float)d;
            else if (opt == OPT_MOM)
                c->sgd.momentum = (float)d;
            else
                c->sgd.weight_decay = (float)d;
            break;
        case OPT_SEED:
            if (parse_u64(v, &c->seed) != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_BACKEND:
            if (strcmp(v, "cpu") != 0 && strcmp(v, "gpu") != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            c->backend = v;
            break;
        case OPT_PREC:
            if (fedge_precision_parse(v, &c->precision) != FEDGE_OK)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_ZERO: c->zero = 1; break;
        case OPT_NOZERO: c->zero = 0; break;
        case OPT_BUCKET:
            if (parse_double(v, &c->bucket_mb) != 0 || c->bucket_mb < 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_CKDIR: c->ckpt_dir = v; break;
        case OPT_CKEVERY:
            if (parse_u64(v, &c->ckpt_every) != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_CKKEEP:
            if (parse_int(v, 1, 1000000, &c->ckpt_keep) != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_EVAL: c->eval_path = v; break;
        case OPT_SUMMARY: a->summary_path = v; break;
        case OPT_LSCALE:
            if (parse_double(v, &c->loss_scale) != 0 || c->loss_scale < 1.0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_LSWIN:
            if (parse_int(v, 1, 1 << 30, &c->loss_scale_window) != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_NOPREFETCH: c->prefetch = 0; break;
        case OPT_LOGEVERY:
            if (parse_int(v, 0, 1 << 30, &c->log_every) != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_LOGLEVEL:
            if (fedge_log_parse_level(v, &lvl) != FEDGE_OK)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            fedge_log_set_level(lvl);
            break;
        case OPT_FAILSTEP:
            if (parse_u64(v, &u) != 0 || u > INT64_MAX)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            c->fail_at_step = (int64_t)u;
            break;
        case OPT_FAILRANK:
            if (parse_int(v, 0, 1 << 20, &i) != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            c->fail_rank = i;
            break;
        case OPT_TP:
        case OPT_PP:
            if (parse_int(v, 1, FEDGE_MODEL_MAX_LAYERS * 64, &i) != 0
                || (opt == OPT_PP && i > FEDGE_MODEL_MAX_LAYERS))
                return loud ? bad_value(name, v) : EXIT_USAGE;
            if (opt == OPT_TP)
                c->tp = i;
            else
                c->pp = i;
            break;
        case OPT_MICRO:
            if (parse_int(v, 1, 4096, &c->micro) != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_SCHED:
            if (strcmp(v, "gpipe") == 0)
                c->pp_schedule = FEDGE_PP_GPIPE;
            else if (strcmp(v, "1f1b") == 0)
                c->pp_schedule = FEDGE_PP_1F1B;
            else
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_GPUCOMM:
            if (strcmp(v, "nccl") == 0)
                c->gpu_comm_mpi = 0;
            else if (strcmp(v, "mpi") == 0)
                c->gpu_comm_mpi = 1;
            else
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_MEMMB:
            if (parse_double(v, &c->memory_budget_mb) != 0 || !(c->memory_budget_mb > 0))
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_LRSCALE:
            if (strcmp(v, "none") == 0)
                c->lr_scaling = FEDGE_LR_CONSTANT;
            else if (strcmp(v, "linear") == 0)
                c->lr_scaling = FEDGE_LR_LINEAR;
            else
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_WARMUP:
            if (parse_u64(v, &c->warmup_steps) != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_LRBASE:
            if (parse_int(v, 1, 1 << 24, &c->lr_base_batch) != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            break;
        case OPT_LAYOUT:
            if (strcmp(v, "auto") != 0)
                return loud ? bad_value(name, v) : EXIT_USAGE;
            a->layout_auto = 1;
            break;
        case OPT_HELP: usage(stdout); return EXIT_USAGE;
        default:
            if (loud) {
                fedge_text_eprintf("fedge-cluster", "unknown or incomplete option '%s'", argv[optind - 1]);
                usage(saved);
            }
            return EXIT_USAGE;
        }
    }
    if (optind != argc) {
        if (loud)
            fedge_text_eprintf("fedge-cluster", "unexpected argument '%s'", argv[optind]);
        return EXIT_USAGE;
    }
    if (c->model_in == NULL || c->data_path == NULL || c->model_out == NULL) {
        if (loud)
            fprintf(stderr, "fedge-cluster: --model, --data and --out are required\n");
        return EXIT_USAGE;
    }
    if (a->steps_given && a->epochs_given) {
        if (loud)
            fprintf(stderr, "fedge-cluster: give --steps or --epochs, not both\n");
        return EXIT_USAGE;
    }
    if (c->precision != FEDGE_PREC_FP32 && strcmp(c->backend, "cpu") == 0) {
        if (loud)
            fprintf(stderr, "fedge-cluster: the cpu backend computes in fp32 only\n");
        return EXIT_USAGE;
    }
    if ((c->tp > 1 || c->pp > 1 || c->micro > 1 || a->layout_auto)
        && strcmp(c->backend, "cpu") != 0 && c->precision != FEDGE_PREC_FP32) {
        if (loud)
            fprintf(stderr, "fedge-cluster: --tp/--pp/--micro-batches/--layout on the gpu backend "
                            "compute in fp32 only (drop --precision %s)\n",
                    fedge_precision_name(c->precision));
        return EXIT_USAGE;
    }
    if (a->layout_auto && strcmp(c->backend, "cpu") != 0) {
        if (loud)
            fprintf(stderr, "fedge-cluster: --layout auto measures the cpu backend; give --tp/--pp "
                            "on the gpu\n");
        return EXIT_USAGE;
    }
    if ((c->tp > 1 || c->pp > 1 || c->micro > 1 || a->layout_auto) && c->zero) {
        if (loud)
            fprintf(stderr, "fedge-cluster: --zero shards pure data parallelism only, not "
                            "with --tp/--pp/--micro-batches/--layout\n");
        return EXIT_USAGE;
    }
    if (a->layout_auto && (c->tp > 1 || c->pp > 1 || c->micro > 1)) {
        if (loud)
            fprintf(stderr, "fedge-cluster: --layout auto picks --tp/--pp/--micro-batches itself\n");
        return EXIT_USAGE;
    }
    if (c->ckpt_every > 0 && c->ckpt_dir == NULL) {
        if (loud)
            fprintf(stderr, "fedge-cluster: --checkpoint-every needs --checkpoint-dir\n");
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

static void write_refine_json(FILE *f, const refine_args *a, const fedge_refine_summary *s,
                              int status)
{
    const fedge_refine_config *c = &a->cfg;
    fprintf(f, "{\"command\":\"refine\",\"status\":\"%s\",\"code\":%d",
            status == FEDGE_OK ? "ok" : "error", status);
    if (status != FEDGE_OK) {
        fprintf(f, ",\"error\":");
        json_str(f, fedge_strerror(status));
        fprintf(f, ",\"where\":");
        json_str(f, s->where[0] ? s->where : "setup");
    }
    fprintf(f, ",\"backend\":");
    json_str(f, c->backend);
    fprintf(f, ",\"precision\":\"%s\",\"world\":%d,\"zero\":%d,\"global_batch\":%d",
            fedge_precision_name(c->precision), s->world, c->zero, c->global_batch);
    fprintf(f, ",\"total_steps\":%" PRIu64 ",\"start_step\":%" PRIu64 ",\"steps_run\":%" PRIu64
               ",\"resumed\":%s",
            s->total_steps, s->start_step, s->steps_run, s->resumed ? "true" : "false");
    fprintf(f, ",\"first_loss\":%.6g,\"last_loss\":%.6g,\"skipped_steps\":%" PRIu64
               ",\"loss_scale\":%.6g",
            s->first_loss, s->last_loss, s->skipped_steps, s->loss_scale);
    fprintf(f, ",\"seconds\":%.4f,\"samples_per_s\":%.1f,\"achieved_tflops\":%.6f",
            s->seconds, s->samples_per_s, s->achieved_tflops);
    fprintf(f, ",\"checkpoints\":%" PRIu64 ",\"mem_per_rank_bytes\":%zu"
               ",\"mem_unsharded_bytes\":%zu,\"optimizer_bytes\":%zu",
            s->checkpoints, s->mem_bytes, s->unsharded.total, s->plan.optimizer);
    fprintf(f, ",\"dp\":%d,\"tp\":%d,\"pp\":%d,\"micro_batches\":%d,\"pp_schedule\":\"%s\""
               ",\"effective_batch\":%d,\"lr_scaling\":\"%s\",\"lr_base_batch\":%d"
               ",\"warmup_steps\":%" PRIu64 ",\"lr\":%.9g,\"lr_final\":%.9g",
            s->dp, s->tp, s->pp, s->micro,
            c->pp_schedule == FEDGE_PP_GPIPE ? "gpipe" : "1f1b", s->effective_batch,
            c->lr_scaling == FEDGE_LR_LINEAR ? "linear" : "none", s->lr_base_batch,
            c->warmup_steps, (double)c->sgd.lr, s->lr_final);
    fprintf(f, ",\"step_ms_min\":%.3f,\"step_ms_first\":%.3f", s->step_ms_min,
            s->step_ms_first);
    if (s->phase_ms[FEDGE_PHASE_FWD] > 0.0 || s->phase_ms[FEDGE_PHASE_PIPE] > 0.0) {
        static const char *const names[FEDGE_PHASES] = {
            "load", "copy", "forward", "backward", "grad_allreduce", "status", "update",
            "pipeline"};
        for (int m = 0; m < 2; m++) {
            const double *v = m ? s->phase_ms_min : s->phase_ms;
            fprintf(f, ",\"%s\":{", m ? "phase_ms_min" : "phase_ms");
            for (int k = 0; k < FEDGE_PHASES; k++)
                fprintf(f, "%s\"%s\":%.4f", k ? "," : "", names[k], v[k]);
            fprintf(f, "}");
        }
    }
    if (s->tp > 1 || s->pp > 1 || s->micro > 1) {
        fprintf(f, ",\"step_ms\":%.3f,\"tp_allreduce_s\":%.6f,\"bubble\":[", s->step_ms,
                s->tp_seconds);
        for (int i = 0; i < s->pp; i++)
            fprintf(f, "%s%.4f", i ? "," : "", s->bubble[i]);
        fprintf(f, "],\"bubble_model\":[");
        for (int i = 0; i < s->pp; i++)
            fprintf(f, "%s%.4f", i ? "," : "", s->bubble_model[i]);
        fprintf(f, "],\"bubble_theory\":%.4f,\"bytes_per_step\":{\"tp\":%.0f,\"pp\":%.0f"
                   ",\"dp\":%.0f,\"tp_analytic\":%.0f,\"pp_analytic\":%.0f,\"dp_analytic\":%.0f}",
                s->bubble_theory, s->bytes_tp, s->bytes_pp, s->bytes_dp, s->bytes_tp_an,
                s->bytes_pp_an, s->bytes_dp_an);
    }
    if (s->evaluated)
        fprintf(f, ",\"eval_accuracy_before\":%.6f,\"eval_accuracy\":%.6f,\"eval_loss\":%.6f",
                s->eval_acc_before, s->eval_acc, s->eval_loss);
    if (status == FEDGE_OK) {
        fprintf(f, ",\"output\":");
        json_str(f, c->model_out);
        fprintf(f, ",\"version\":\"%s\"", s->version_hex);
    }
    fprintf(f, "}\n");
}

/* Before MPI_Init: ranks sharing cores yield while they wait
 * (fedge_plan_should_yield), for the run and the planner's trial steps
 * alike; an explicit OMPI_MCA_mpi_yield_when_idle is kept. */
static void yield_if_oversubscribed(void)
{
    if (fedge_plan_should_yield(getenv("OMPI_COMM_WORLD_LOCAL_SIZE"),
                                getenv("OMPI_MCA_mpi_yield_when_idle") != NULL,
                                sysconf(_SC_NPROCESSORS_ONLN)))
        setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0);
}

/* Before MPI_Init (and before any thread: the loader's inherit it): ranks
 * sharing cores each pin themselves to one CPU of their mask, consecutive
 * local ranks together (fedge_plan_bind_cpu), so that the planner's trial
 * steps and the run see the same placement. FEDGE_CLUSTER_NO_BIND=1 leaves
 * placement to the launcher and the OS. */
static void bind_if_oversubscribed(void)
{
    cpu_set_t mask, one;
    int cpus[CPU_SETSIZE], n = 0;
    const char *off = getenv("FEDGE_CLUSTER_NO_BIND");
    if ((off != NULL && strcmp(off, "0") != 0) || sched_getaffinity(0, sizeof(mask), &mask) != 0)
        return;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &mask))
            cpus[n++] = c;
    int k = fedge_plan_bind_cpu(getenv("OMPI_COMM_WORLD_LOCAL_RANK"), getenv("OMPI_COMM_WORLD_LOCAL_SIZE"), n);
    if (k < 0)
        return;
    CPU_ZERO(&one);
    CPU_SET(cpus[k], &one);
    if (sched_setaffinity(0, sizeof(one), &one) != 0)
        FEDGE_WARN("could not pin this rank to CPU %d (ranks share cores; placement left to the OS)", cpus[k]);
    else
        FEDGE_INFO("local rank %s of %s pinned to CPU %d (ranks share %d CPUs)",
                   getenv("OMPI_COMM_WORLD_LOCAL_RANK"), getenv("OMPI_COMM_WORLD_LOCAL_SIZE"), cpus[k], n);
}

static int cmd_refine(int argc, char **argv)
{
    refine_args a;
    fedge_refine_summary sum;
    int rank = 0, provided = 0;
    memset(&a, 0, sizeof(a));
    memset(&sum, 0, sizeof(sum));
    fedge_refine_config_defaults(&a.cfg);
    yield_if_oversubscribed();
    bind_if_oversubscribed();
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "fedge-cluster: MPI_Init failed\n");
        return EXIT_RUN;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char tag[32];
    snprintf(tag, sizeof(tag), "cluster r%d", rank);
    fedge_log_set_tag(tag);
    int rc = parse_train_args(argc, argv, &a, rank == 0);
    if (rc == EXIT_OK && !fedge_backend_available(a.cfg.backend)) {
        if (rank == 0)
            fprintf(stderr, "fedge-cluster: backend '%s' is not in this build (make CUDA=1)\n",
                    a.cfg.backend);
        rc = EXIT_USAGE;
    }
    if (rc != EXIT_OK) {
        MPI_Finalize();
        return rc;
    }
    int st = FEDGE_OK;
    if (a.layout_auto) {
        fedge_model m;
        fedge_plan_result *plan = calloc(1, sizeof(*plan));
        int world = 1;
        MPI_Comm_size(MPI_COMM_WORLD, &world);
        memset(&m, 0, sizeof(m));
        st = plan != NULL ? fedge_model_load(a.cfg.model_in, &m, NULL) : FEDGE_ERR_NOMEM;
        int all = FEDGE_OK; /* the planner is collective: every rank goes on or none */
        if (MPI_Allreduce(&st, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD) != MPI_SUCCESS)
            all = FEDGE_ERR_CLUSTER_COMM;
        st = st != FEDGE_OK ? st : all;
        if (st != FEDGE_OK)
            snprintf(sum.where, sizeof(sum.where), "input model");
        if (st == FEDGE_OK)
            st = fedge_plan_run(&m.spec, a.cfg.global_batch, world, a.cfg.memory_budget_mb, plan);
        if (st == FEDGE_ERR_UNSUPPORTED)
            snprintf(sum.where, sizeof(sum.where),
                     "layout auto: tensor/pipeline layouts are for softmax/mlp specs");
        if (st == FEDGE_OK && plan->choice >= 0) {
            const fedge_plan_layout *o = &plan->cand[plan->choice];
            a.cfg.tp = o->tp;
            a.cfg.pp = o->pp;
            a.cfg.micro = o->micro;
            a.cfg.pp_schedule = FEDGE_PP_1F1B;
            if (rank == 0) {
                fedge_plan_print(stderr, plan, a.cfg.memory_budget_mb);
                FEDGE_INFO("--layout auto: dp %d x tp %d x pp %d, %d micro-batches (predicted "
                           "%.3f ms a step)", o->dp, o->tp, o->pp, o->micro, o->predict_ms);
            }
        } else if (st == FEDGE_OK && rank == 0) {
            fedge_plan_print(stderr, plan, a.cfg.memory_budget_mb);
            FEDGE_WARN("--layout auto: no layout fits the memory budget; trying pure DP");
        }
        if (st != FEDGE_OK && sum.where[0] == 0)
            snprintf(sum.where, sizeof(sum.where), "layout auto (planner)");
        fedge_model_free(&m);
        free(plan);
    }
    if (st == FEDGE_OK)
        st = fedge_refine_run(&a.cfg, &sum);
    if (rank == 0) {
        if (st != FEDGE_OK)
            FEDGE_ERROR("refine failed in %s: %s", sum.where[0] ? sum.where : "setup",
                        fedge_strerror(st));
        write_refine_json(stdout, &a, &sum, st);
        fflush(stdout);
        if (a.summary_path != NULL) {
            char tmp[4096];
            FILE *f = NULL;
            if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", a.summary_path) < sizeof(tmp))
                f = fopen(tmp, "w");
            if (f != NULL) {
                write_refine_json(f, &a, &sum, st);
                if (fclose(f) != 0 || rename(tmp, a.summary_path) != 0)
                    FEDGE_ERROR("cannot write %s", a.summary_path);
            } else {
                FEDGE_ERROR("cannot write %s", a.summary_path);
            }
        }
    }
    MPI_Finalize();
    return st == FEDGE_OK ? EXIT_OK : EXIT_RUN;
}

/* ---- reference: plain single-process training --------------------------- */

static int cmd_reference(int argc, char **argv)
{
    refine_args a;
    fedge_model m;
    fedge_sgd opt;
    fedge_loader ld;
    float *grad = NULL, *scratch = NULL;
    int ret = FEDGE_OK, ld_open = 0;
    double first = 0, last = 0;
    uint64_t total = 0;
    uint8_t version[FEDGE_HASH_LEN];
    char hex[FEDGE_HASH_HEX_LEN];
    memset(&a, 0, sizeof(a));
    memset(&m, 0, sizeof(m));
    memset(&opt, 0, sizeof(opt));
    fedge_refine_config_defaults(&a.cfg);
    int rc = parse_train_args(argc, argv, &a, 1);
    if (rc != EXIT_OK)
        return rc;
    const fedge_refine_config *c = &a.cfg;
    CHK(fedge_model_load(c->model_in, &m, NULL));
    CHK(fedge_loader_open(&ld, c->data_path, c->seed, c->global_batch, 1, 0, 1));
    ld_open = 1;
    if (ld.reader.dim != m.spec.input_dim || ld.reader.n_classes > m.spec.classes)
        FAIL(FEDGE_ERR_MODEL_SHAPE);
    CHK(fedge_sgd_init(&opt, m.n_params, &c->sgd));
    grad = malloc(m.n_params * sizeof(float));
    size_t sf = fedge_model_scratch_floats(&m.spec, c->global_batch);
    if (sf == 0) {
        fprintf(stderr, "fedge-cluster: batch %d: the model's activations exceed its limit\n",
                c->global_batch);
        FAIL(FEDGE_ERR_MODEL_SPEC);
    }
    scratch = malloc(sf * sizeof(float));
    if (grad == NULL || scratch == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    total = c->steps > 0 ? c->steps
                         : (uint64_t)ceil(c->epochs * (double)ld.reader.n / c->global_batch);
    for (uint64_t s = 0; s < total; s++) {
        const float *x;
        const uint8_t *y;
        int rows;
        float loss;
        CHK(fedge_loader_get(&ld, s, &x, &y, &rows));
        CHK(fedge_model_loss_grad(&m, x, y, rows, (uint64_t)c->seed + s, scratch, grad, &loss));
        opt.cfg.lr = (float)fedge_lr_at(c->sgd.lr, c->lr_scaling, c->global_batch,
                                         c->lr_base_batch > 0 ? c->lr_base_batch
                                                              : c->global_batch,
                                         c->warmup_steps, s);
        CHK(fedge_sgd_step(&opt, m.params, grad));
        if (s == 0)
            first = loss;
        last = loss;
    }
    CHK(fedge_model_save(&m, c->model_out, version));
    fedge_hash_to_hex(version, hex);
cleanup:
    if (ret == FEDGE_OK) {
        printf("{\"command\":\"reference\",\"status\":\"ok\",\"code\":0,\"steps\":%" PRIu64
               ",\"first_loss\":%.6g,\"last_loss\":%.6g,\"version\":\"%s\"}\n",
               total, first, last, hex);
    } else {
        printf("{\"command\":\"reference\",\"status\":\"error\",\"code\":%d,\"error\":", ret);
        json_str(stdout, fedge_strerror(ret));
        printf("}\n");
    }
    if (ld_open)
        fedge_loader_close(&ld);
    fedge_sgd_free(&opt);
    fedge_model_free(&m);
    free(grad);
    free(scratch);
    return ret == FEDGE_OK ? EXIT_OK : EXIT_RUN;
}

/* ---- compare ------------------------------------------------------------ */

static int cmd_compare(int argc, char **argv)
{
    double tol = 1e-5;
    const char *paths[2] = {NULL, NULL};
    int np = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tol") == 0 && i + 1 < argc) {
            if (parse_double(argv[++i], &tol) != 0 || tol < 0)
                return bad_value("tol", argv[i]);
        } else if (argv[i][0] != '-' && np < 2) {
            paths[np++] = argv[i];
        } else {
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (np != 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    fedge_model a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    int ret = FEDGE_OK, rc = EXIT_RUN;
    CHK(fedge_model_load(paths[0], &a, NULL));
    CHK(fedge_model_load(paths[1], &b, NULL));
    if (a.n_params != b.n_params || fedge_model_spec_id(&a.spec) != fedge_model_spec_id(&b.spec))
        FAIL(FEDGE_ERR_MODEL_SHAPE);
    double diff2 = 0, ref2 = 0, max_abs = 0;
    for (size_t i = 0; i < a.n_params; i++) {
        double d = (double)a.params[i] - (double)b.params[i];
        diff2 += d * d;
        ref2 += (double)b.params[i] * (double)b.params[i];
        if (fabs(d) > max_abs)
            max_abs = fabs(d);
    }
    double rel = sqrt(diff2) / (ref2 > 0 ? sqrt(ref2) : 1.0);
    int equal = rel <= tol;
    printf("{\"command\":\"compare\",\"status\":\"ok\",\"n_params\":%zu,\"max_abs\":%.6g,"
           "\"rel_l2\":%.6g,\"tol\":%.6g,\"within_tol\":%s}\n",
           a.n_params, max_abs, rel, tol, equal ? "true" : "false");
    rc = equal ? EXIT_OK : EXIT_RUN;
cleanup:
    if (ret != FEDGE_OK) {
        printf("{\"command\":\"compare\",\"status\":\"error\",\"code\":%d,\"error\":", ret);
        json_str(stdout, fedge_strerror(ret));
        printf("}\n");
        rc = EXIT_RUN;
    }
    fedge_model_free(&a);
    fedge_model_free(&b);
    return rc;
}

/* ---- init, make-shard, memory ------------------------------------------- */

static const struct option misc_opts[] = {
    {"spec", required_argument, NULL, OPT_SPEC},
    {"seed", required_argument, NULL, OPT_SEED},
    {"out", required_argument, NULL, OPT_OUT},
    {"fashion-mnist", required_argument, NULL, OPT_FMNIST},
    {"synthetic", required_argument, NULL, OPT_SYNTH},
    {"rows", required_argument, NULL, OPT_ROWS},
    {"dim", required_argument, NULL, OPT_DIM},
    {"classes", required_argument, NULL, OPT_CLASSES},
    {"f32", no_argument, NULL, OPT_F32},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"precision", required_argument, NULL, OPT_PREC},
    {NULL, 0, NULL, 0},
};

typedef struct {
    const char *spec, *out, *fmnist, *backend;
    uint64_t seed, synthetic, rows;
    int dim, classes, f32, batch, precision;
} misc_args;

static int parse_misc(int argc, char **argv, misc_args *a)
{
    int opt;
    memset(a, 0, sizeof(*a));
    a->seed = 1;
    a->dim = 784;
    a->classes = 10;
    a->batch = 64;
    a->backend = "cpu";
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "", misc_opts, NULL)) != -1) {
        const char *v = optarg;
        switch (opt) {
        case OPT_SPEC: a->spec = v; break;
        case OPT_OUT: a->out = v; break;
        case OPT_FMNIST:
            if (strcmp(v, "train") != 0 && strcmp(v, "test") != 0)
                return bad_value("fashion-mnist", v);
            a->fmnist = v;
            break;
        case OPT_BACKEND:
            if (strcmp(v, "cpu") != 0 && strcmp(v, "gpu") != 0)
                return bad_value("backend", v);
            a->backend = v;
            break;
        case OPT_SEED:
            if (parse_u64(v, &a->seed) != 0)
                return bad_value("seed", v);
            break;
        case OPT_SYNTH:
            if (parse_u64(v, &a->synthetic) != 0 || a->synthetic == 0
                || a->synthetic > FEDGE_DATASET_MAX_ROWS)
                return bad_value("synthetic", v);
            break;
        case OPT_ROWS:
            if (parse_u64(v, &a->rows) != 0 || a->rows == 0)
                return bad_value("rows", v);
            break;
        case OPT_DIM:
            if (parse_int(v, 1, FEDGE_DATASET_MAX_DIM, &a->dim) != 0)
                return bad_value("dim", v);
            break;
        case OPT_CLASSES:
            if (parse_int(v, 2, 256, &a->classes) != 0)
                return bad_value("classes", v);
            break;
        case OPT_BATCH:
            if (parse_int(v, 1, 1 << 24, &a->batch) != 0)
                return bad_value("batch", v);
            break;
        case OPT_PREC:
            if (fedge_precision_parse(v, &a->precision) != FEDGE_OK)
                return bad_value("precision", v);
            break;
        case OPT_F32: a->f32 = 1; break;
        default:
            fedge_text_eprintf("fedge-cluster", "unknown or incomplete option '%s'", argv[optind - 1]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind != argc) {
        fedge_text_eprintf("fedge-cluster", "unexpected argument '%s'", argv[optind]);
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

static int cmd_init(int argc, char **argv)
{
    misc_args a;
    fedge_model_spec spec;
    fedge_model m;
    fedge_rng rng;
    uint8_t version[FEDGE_HASH_LEN];
    char hex[FEDGE_HASH_HEX_LEN];
    int ret;
    int rc = parse_misc(argc, argv, &a);
    if (rc != EXIT_OK)
        return rc;
    if (a.spec == NULL || a.out == NULL) {
        fprintf(stderr, "fedge-cluster: init needs --spec and --out\n");
        return EXIT_USAGE;
    }
    if (fedge_model_spec_parse(a.spec, &spec) != FEDGE_OK)
        return bad_value("spec", a.spec);
    memset(&m, 0, sizeof(m));
    fedge_rng_seed(&rng, a.seed);
    CHK(fedge_model_init(&m, &spec));
    CHK(fedge_model_randomize(&m, &rng));
    CHK(fedge_model_save(&m, a.out, version));
    fedge_hash_to_hex(version, hex);
    printf("{\"command\":\"init\",\"status\":\"ok\",\"n_params\":%zu,\"version\":\"%s\"}\n",
           m.n_params, hex);
cleanup:
    if (ret != FEDGE_OK)
        fprintf(stderr, "fedge-cluster: init: %s\n", fedge_strerror(ret));
    fedge_model_free(&m);
    return ret == FEDGE_OK ? EXIT_OK : EXIT_RUN;
}

static int cmd_make_shard(int argc, char **argv)
{
    misc_args a;
    fedge_dataset ds;
    size_t *idx = NULL;
    int ret;
    int rc = parse_misc(argc, argv, &a);
    if (rc != EXIT_OK)
        return rc;
    if (a.out == NULL || (a.fmnist == NULL) == (a.synthetic == 0)) {
        fprintf(stderr, "fedge-cluster: make-shard needs --out and one of --fashion-mnist "
                        "or --synthetic\n");
        return EXIT_USAGE;
    }
    memset(&ds, 0, sizeof(ds));
    if (a.fmnist != NULL)
        CHK(fedge_dataset_load_fashion_mnist(&ds, NULL, strcmp(a.fmnist, "train") == 0));
    else
        CHK(fedge_synthetic_dataset(&ds, (size_t)a.synthetic, a.dim, a.classes, a.seed));
    size_t n = a.rows > 0 && a.rows < ds.n ? (size_t)a.rows : ds.n;
    idx = malloc(n * sizeof(size_t));
    if (idx == NULL)
        FAIL(FEDGE_ERR_NOMEM);
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    CHK(fedge_shard_write(a.out, &ds, idx, n, a.f32 ? FEDGE_SHARD_F32 : FEDGE_SHARD_U8));
    printf("{\"command\":\"make-shard\",\"status\":\"ok\",\"rows\":%zu,\"dim\":%d,"
           "\"classes\":%d}\n", n, ds.dim, ds.n_classes);
cleanup:
    if (ret != FEDGE_OK)
        fprintf(stderr, "fedge-cluster: make-shard: %s\n", fedge_strerror(ret));
    free(idx);
    fedge_dataset_free(&ds);
    return ret == FEDGE_OK ? EXIT_OK : EXIT_RUN;
}

static int cmd_memory(int argc, char **argv)
{
    misc_args a;
    fedge_model_spec spec;
    int rc = parse_misc(argc, argv, &a);
    if (rc != EXIT_OK)
        return rc;
    if (a.spec == NULL || fedge_model_spec_parse(a.spec, &spec) != FEDGE_OK) {
        fprintf(stderr, "fedge-cluster: memory needs a valid --spec\n");
        return EXIT_USAGE;
    }
    int gpu = strcmp(a.backend, "gpu") == 0;
    fedge_dense_shape dense;
    if (gpu && fedge_dense_shape_of(&spec, &dense) != FEDGE_OK) {
        fprintf(stderr, "fedge-cluster: the gpu backend trains softmax/mlp specs only; "
                        "%s is a cnn\n", a.spec);
        return EXIT_USAGE;
    }
    if (!gpu && a.precision != FEDGE_PREC_FP32) {
        fprintf(stderr, "fedge-cluster: the cpu backend computes in fp32 only\n");
        return EXIT_USAGE;
    }
    size_t n = fedge_model_spec_param_count(&spec);
    printf("# per-rank training-state memory, %s %s, %zu parameters, global batch %d\n",
           a.backend, fedge_precision_name(a.precision), n, a.batch);
    printf("# %2s %14s %14s %14s %14s %8s\n", "N", "unsharded_B", "zero1_B", "optim_unsh_B",
           "optim_zero1_B", "saving");
    const int ns[] = {1, 2, 4, 8};
    for (size_t i = 0; i < FEDGE_ARRAY_LEN(ns); i++) {
        fedge_layout lo;
        fedge_memory_plan u, z;
        if (a.batch < ns[i])
            continue;
        fedge_layout_init(&lo, n, ns[i], 0);
        int local = (a.batch + ns[i] - 1) / ns[i];
        fedge_memory_plan_make(&spec, &lo, local, a.precision, 0, gpu, &u);
        fedge_memory_plan_make(&spec, &lo, local, a.precision, 1, gpu, &z);
        printf("  %2d %14zu %14zu %14zu %14zu %7.1f%%\n", ns[i], u.total, z.total, u.optimizer,
               z.optimizer, 100.0 * (1.0 - (double)z.total / (double)u.total));
    }
    return EXIT_OK;
}

/* ---- plan ----------------------------------------------------------- */

static int cmd_plan(int argc, char **argv)
{
    const char *spec_text = NULL;
    int batch = 64, ranks = 0, rank = 0, world = 1, provided = 0;
    double budget = 0.0;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--spec") == 0 && v) {
            spec_text = v;
        } else if (strcmp(argv[i], "--batch") == 0 && v) {
            if (parse_int(v, 1, 1 << 24, &batch) != 0)
                return bad_value("batch", v);
        } else if (strcmp(argv[i], "--ranks") == 0 && v) {
            if (parse_int(v, 1, 1 << 16, &ranks) != 0)
                return bad_value("ranks", v);
        } else if (strcmp(argv[i], "--memory-per-rank-mb") == 0 && v) {
            if (parse_double(v, &budget) != 0 || !(budget > 0))
                return bad_value("memory-per-rank-mb", v);
        } else {
            usage(stderr);
            return EXIT_USAGE;
        }
        i++;
    }
    fedge_model_spec spec;
    fedge_dense_shape sh;
    if (spec_text == NULL || fedge_model_spec_parse(spec_text, &spec) != FEDGE_OK) {
        fprintf(stderr, "fedge-cluster: plan needs a valid --spec\n");
        return EXIT_USAGE;
    }
    if (fedge_dense_shape_of(&spec, &sh) != FEDGE_OK) {
        fprintf(stderr, "fedge-cluster: plan: tensor/pipeline layouts are for softmax/mlp specs\n");
        return EXIT_USAGE;
    }
    yield_if_oversubscribed();
    bind_if_oversubscribed();
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "fedge-cluster: MPI_Init failed\n");
        return EXIT_RUN;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    fedge_plan_result *r = calloc(1, sizeof(*r));
    int st = r != NULL ? fedge_plan_run(&spec, batch, ranks > 0 ? ranks : world, budget, r)
                       : FEDGE_ERR_NOMEM;
    if (rank == 0) {
        if (st == FEDGE_OK) {
            printf("# plan for %s, global batch %d, %d ranks (probed on %d)\n", spec_text, batch,
                   ranks > 0 ? ranks : world, world);
            fedge_plan_print(stdout, r, budget);
            if (r->choice >= 0) {
                const fedge_plan_layout *o = &r->cand[r->choice];
                printf("{\"command\":\"plan\",\"status\":\"ok\",\"dp\":%d,\"tp\":%d,\"pp\":%d,"
                       "\"micro_batches\":%d,\"predicted_ms\":%.3f,\"mem_per_rank_bytes\":%zu}\n",
                       o->dp, o->tp, o->pp, o->micro, o->predict_ms, o->mem_bytes);
            } else {
                printf("{\"command\":\"plan\",\"status\":\"error\",\"error\":\"no layout fits "
                       "the memory budget\"}\n");
            }
        } else {
            printf("{\"command\":\"plan\",\"status\":\"error\",\"code\":%d,\"error\":", st);
            json_str(stdout, fedge_strerror(st));
            printf("}\n");
        }
        fflush(stdout);
    }
    int none = st == FEDGE_OK && r->choice < 0;
    free(r);
    MPI_Finalize();
    return st == FEDGE_OK && !none ? EXIT_OK : EXIT_RUN;
}

int main(int argc, char **argv)
{
    if (fedge_blas_threads_from_env(1, NULL) != FEDGE_OK) { /* one BLAS thread per rank */
        fedge_text_eprintf("fedge-cluster", "FEDGE_BLAS_THREADS: want 1..%d", FEDGE_BLAS_MAX_THREADS);
        return EXIT_USAGE;
    }
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    argc--;
    argv++;
    if (strcmp(cmd, "refine") == 0)
        return cmd_refine(argc, argv);
    if (strcmp(cmd, "reference") == 0)
        return cmd_reference(argc, argv);
    if (strcmp(cmd, "compare") == 0)
        return cmd_compare(argc, argv);
    if (strcmp(cmd, "init") == 0)
        return cmd_init(argc, argv);
    if (strcmp(cmd, "make-shard") == 0)
        return cmd_make_shard(argc, argv);
    if (strcmp(cmd, "memory") == 0)
        return cmd_memory(argc, argv);
    if (strcmp(cmd, "plan") == 0)
        return cmd_plan(argc, argv);
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("fedge-cluster %s\n", FEDGE_VERSION);
        return EXIT_OK;
    }
    fedge_text_eprintf("fedge-cluster", "unknown command '%s'", cmd);
    usage(stderr);
    return EXIT_USAGE;
}
