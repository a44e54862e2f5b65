# fedge — the one build entry.
#
#   make                        build everything this machine can build
#   make test                   dependencies, build, unit + integration + ASan/UBSan tests
#                               (and test_blas built with BLAS=none)
#   make demo                   dependencies, build, a real federated run (see README.md)
#   make demo MODEL=cnn:...     the same run with another model spec (default mlp:784-200-10)
#   make asan                   ASan + UBSan build of the unit tests, and run them
#   make unit-noblas            the unit tests built with BLAS=none (build/noblas), and run them
#   make CROSS=aarch64-linux-gnu edge   cross-build the edge client for a device: -Os, LTO,
#                               stripped, mbedTLS/libcoap trimmed and static (docs/EDGE.md);
#                               also CROSS=arm-linux-gnueabihf
#   make EDGE_TRIM=1 edge       the same edge profile for this machine (build/edge-x86_64,
#                               deps in build/deps/<triplet>-edge): what the heap tests measure
#   make CUDA=1                 require the GPU backend (default: built when nvcc is found)
#   make BLAS=openblas|none     fedge_sgemm on OpenBLAS's cblas_sgemm (default where its
#                               -dev package for the target is installed) or on the
#                               portable kernel (shared/blas.h; a CROSS build's default)
#   make bench                  build and run the benchmark programs (tools/bench/)
#   make fuzz                   build the libFuzzer targets (clang) and run each FUZZ_TIME s
#   make mcu                    the bare-metal Cortex-M4F core (mcu/, build/cortex-m4): firmware
#                               for QEMU's mps2-an386 (tools/deps.sh build mcu installs the toolchain)
#
# Sources are found by convention, so adding a file needs no Makefile edit:
#   shared/*.c      -> libfedge.a          (core library)
#   policy/*.c      -> libfedge_policy.a   (governance engine, audit chain)
#   aggregator/*.c  -> fedge-aggregator    (main.c) + libfedge_agg.a (the rest)
#   edge/*.c        -> fedge-edge          (main.c) + libfedge_edge.a
#   cluster/*.c     -> fedge-cluster       (main.c, built with mpicc) + libfedge_cluster.a
#   cluster/gpu/*.cu   GPU backend, when CUDA is on
#   tools/<name>/*.c -> fedge-<name>
#   tools/bench/*.c -> bench-<name>        (bench/mpi_*.c with mpicc)
#   tests/unit/test_*.c -> one cmocka binary each

CROSS ?=
SAN ?= 0
V ?= 0
EDGE_TRIM ?= 0
# EDGE_PROFILE: the shipped edge's build, a cross one or (EDGE_TRIM=1) native
EDGE_PROFILE := $(if $(CROSS),1,$(filter 1,$(EDGE_TRIM)))

ifneq ($(EDGE_PROFILE),)
  # A cross build is the edge client for a device (aarch64-linux-gnu,
  # arm-linux-gnueabihf): -Os, section GC and LTO, stripped, linked against the
  # target's glibc only (libcoap and mbedTLS static, built by tools/deps.sh
  # with edge/mbedtls_config_edge.h). EDGE_STATIC=1 links glibc statically too;
  # EDGE_LTO=0 leaves LTO out (tools/bench/edge_size.sh's per-library split).
  # EDGE_TRIM=1 (no CROSS) is the same build for this machine, so the heap
  # tests measure the shipped configuration; EDGE_STRIP=0 keeps its symbols
  # (massif's allocation tree).
  ifneq ($(CROSS),)
    CC := $(CROSS)-gcc
    AR := $(CROSS)-gcc-ar
    TRIPLET := $(CROSS)
    BUILD ?= build/$(CROSS)
    DEPS_DIR := build/deps/$(TRIPLET)
    DEPS_ARG := $(CROSS)
  else
    CC := gcc
    AR := gcc-ar
    TRIPLET := $(shell gcc -dumpmachine)
    BUILD ?= build/edge-$(shell uname -m)
    DEPS_DIR := build/deps/$(TRIPLET)-edge
    DEPS_ARG := edge
  endif
  EDGE_STRIP ?= 1
  OPT ?= -Os
  BLAS ?= none
  EDGE_LTO ?= 1
  EDGE_STATIC ?= 0
  LTOFLAGS := $(if $(filter 1,$(EDGE_LTO)),-flto=auto,-fno-lto)
  # scratch sized for the edge (docs/EDGE.md, Memory): gradient slices of
  # 256 floats (or one dense row), u8 rows converted one at a time (the same
  # bits as the defaults with the portable GEMM), activations within a fixed
  # 12 KiB (larger models: micro-batches; the GEMM's blocking takes the rest
  # of the budget at run time, --act-budget-kb)
  EDGE_MEM_DEFS := -DFEDGE_MODEL_GRAD_CHUNK=256 -DFEDGE_MODEL_XIN_ROWS=1 \
                   -DFEDGE_EDGE_ACT_BUDGET=12288u -DFEDGE_EDGE_ACT_GROWS=0
  CROSS_CFLAGS := -ffunction-sections -fdata-sections $(LTOFLAGS) $(EDGE_MEM_DEFS)
  CROSS_LDFLAGS := $(OPT) $(LTOFLAGS) -Wl,--gc-sections -Wl,--as-needed $(if $(filter 1,$(EDGE_STRIP)),-s) \
                   $(if $(filter 1,$(EDGE_STATIC)),-static)
  EDGE_LDFLAGS = -Wl,-Map=$@.map
else
  TRIPLET := $(shell gcc -dumpmachine)
  ifeq ($(SAN),1)
    BUILD ?= build/asan
  else
    BUILD ?= build/native
  endif
endif

DEPS_DIR ?= build/deps/$(TRIPLET)
ifneq ($(EDGE_PROFILE),)
  DEPS_STAMP := $(DEPS_DIR)/.edge-deps
  DEPS_INPUTS := edge/mbedtls_config_edge.h tools/deps/libcoap-4.3.1-mbedtls-psk-only.patch
else
  DEPS_STAMP := $(DEPS_DIR)/.libcoap-4.3.1-mbedtls
  DEPS_INPUTS := tools/deps/libcoap-4.3.1-bert-block1-per-block.patch tools/deps/libcoap-4.3.1-session-walk.patch \
                 tools/deps/libcoap-4.3.1-endpoint-drain.patch
endif
MPICC ?= mpicc
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME ?= /usr/local/cuda
ifeq ($(CUDA),)
  CUDA := $(if $(NVCC),1,0)
endif
ifneq ($(EDGE_PROFILE),)
  CUDA := 0
endif

# BLAS: OpenBLAS (Debian's libopenblas-dev, pthread flavour; tools/deps.sh installs it
# for the native and the CROSS target) unless BLAS=none. Only gemm.c, blas.c and test_blas.c read
# the switch; a stamp named after it rebuilds them when it changes.
OPENBLAS_INC := /usr/include/$(TRIPLET)/openblas-pthread
OPENBLAS_LIB := /usr/lib/$(TRIPLET)/openblas-pthread
BLAS ?= $(if $(wildcard $(OPENBLAS_INC)/cblas.h),openblas,none)
ifeq ($(BLAS),openblas)
  BLAS_CFLAGS := -DFEDGE_BLAS_OPENBLAS=1 -I$(OPENBLAS_INC)
  # Debian's armhf libopenblas.a has assembly objects without a GNU-stack note,
  # which would give a static edge an executable stack
  BLAS_LIBS := -L$(OPENBLAS_LIB) -lopenblas -Wl,-z,noexecstack
  # the edge links the archive: 2 MB less resident than loading the whole
  # 36 MB DYNAMIC_ARCH shared library (docs/BENCHMARKS.md, edge memory)
  EDGE_BLAS_LIBS := $(OPENBLAS_LIB)/libopenblas.a -Wl,-z,noexecstack
else ifeq ($(BLAS),none)
  BLAS_CFLAGS :=
  BLAS_LIBS :=
  EDGE_BLAS_LIBS :=
else
  $(error BLAS=$(BLAS): use openblas or none)
endif

OPT ?= -O2
# GCC's -O2 vectorises only loops whose trip count it knows (its "very cheap"
# cost model); the dynamic model also vectorises the model's element loops
# (bias, ReLU, pooling, softmax) with run-time length and alias checks. IEEE
# semantics are kept (no reassociation), so results do not change. GCC only:
# the fuzz build (clang) does not get it.
VECTFLAGS ?= -fvect-cost-model=dynamic
WARN := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CFLAGS_BASE := -std=c11 $(OPT) -g $(WARN) -D_GNU_SOURCE -fno-strict-aliasing \
               -Ishared -Ipolicy -Iaggregator -Iedge -Icluster -I$(DEPS_DIR)/include \
               $(BLAS_CFLAGS)
ifeq ($(SAN),1)
  SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
endif
CFLAGS += $(CFLAGS_BASE) $(VECTFLAGS) $(SANFLAGS) $(CROSS_CFLAGS)
LDFLAGS += $(SANFLAGS) $(CROSS_LDFLAGS)

COAP_LIBS := -L$(DEPS_DIR)/lib -lcoap-3-mbedtls
TLS_LIBS := -lmbedtls -lmbedx509 -lmbedcrypto
SYS_LIBS := $(BLAS_LIBS) -lz -lm -lpthread
# the edge uses no zlib symbol
EDGE_SYS_LIBS := -lm -lpthread
# OpenSSL's libcrypto: the fast SHA-256 / AES-GCM backend (shared/crypto.h) of
# the server programs. Only those that call fedge_crypto_use_openssl() pull
# shared/crypto_openssl.o out of libfedge.a; the edge links neither.
OPENSSL_LIBS := -lcrypto
SERVER_LIBS := $(COAP_LIBS) $(TLS_LIBS) $(OPENSSL_LIBS) -lsqlite3 -lyaml $(SYS_LIBS)
SERVER_LIBS += -lmicrohttpd # aggregator/metrics_http.c: Prometheus metrics and /healthz
# fedge-aggregator's (D)TLS: libcoap on OpenSSL (tools/deps.sh builds both),
# AES-GCM records on AES-NI; the edges and the device-side tools keep mbedTLS
AGG_LIBS := -L$(DEPS_DIR)/lib -lcoap-3-openssl -lssl $(filter-out -lcoap-3-mbedtls,$(SERVER_LIBS))

ifeq ($(V),1)
  Q :=
else
  Q := @
endif

SHARED_SRC := $(wildcard shared/*.c)
ifneq ($(EDGE_PROFILE),)
  # a cross build is the edge's: no libssl-dev for the target
  SHARED_SRC := $(filter-out shared/crypto_openssl.c,$(SHARED_SRC))
endif
POLICY_SRC := $(wildcard policy/*.c)
AGG_SRC := $(filter-out aggregator/main.c,$(wildcard aggregator/*.c aggregator/*/*.c))
EDGE_SRC := $(filter-out edge/main.c,$(wildcard edge/*.c))
CLUSTER_SRC := $(filter-out cluster/main.c,$(wildcard cluster/*.c))
CLUSTER_CU := $(wildcard cluster/gpu/*.cu)
TOOL_DIRS := $(filter-out tools/bench,$(patsubst %/,%,$(dir $(wildcard tools/*/*.c))))
TOOL_NAMES := $(sort $(notdir $(TOOL_DIRS)))
BENCH_SRC := $(filter-out tools/bench/mpi_%,$(wildcard tools/bench/*.c))
BENCH_MPI_SRC := $(wildcard tools/bench/mpi_*.c)
UNIT_SRC := $(wildcard tests/unit/test_*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

LIBFEDGE := $(BUILD)/lib/libfedge.a
LIBPOLICY := $(BUILD)/lib/libfedge_policy.a
LIBAGG := $(BUILD)/lib/libfedge_agg.a
LIBEDGE := $(BUILD)/lib/libfedge_edge.a
LIBCLUSTER := $(BUILD)/lib/libfedge_cluster.a
BIN := $(BUILD)/bin

AGG_BIN := $(if $(wildcard aggregator/main.c),$(BIN)/fedge-aggregator)
EDGE_BIN := $(if $(wildcard edge/main.c),$(BIN)/fedge-edge)
CLUSTER_BIN := $(if $(wildcard cluster/main.c),$(BIN)/fedge-cluster)
TOOL_BINS := $(addprefix $(BIN)/fedge-,$(TOOL_NAMES))
BENCH_BINS := $(patsubst tools/bench/%.c,$(BIN)/bench-%,$(BENCH_SRC) $(BENCH_MPI_SRC))
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

ifeq ($(CUDA),1)
  CU_OBJ := $(patsubst %.cu,$(BUILD)/obj/%.o,$(CLUSTER_CU))
  CUDA_LIBS := -L$(CUDA_HOME)/lib64 -lcudart -lcublas -lcublasLt -lnccl -lstdc++ -Wl,-rpath,$(CUDA_HOME)/lib64
  CUDA_CFLAGS := -DFEDGE_HAVE_CUDA=1 -I$(CUDA_HOME)/include
  # Machine code for Ampere (sm_80) and Hopper (sm_90), and sm_90 PTX that the
  # driver compiles for anything newer (Blackwell), so a lent GPU of any of
  # these generations runs the same build. CUDA_ARCHS overrides the list.
  CUDA_ARCHS ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
                -gencode arch=compute_90,code=compute_90
  NVCCFLAGS ?= -O3 -std=c++17 $(CUDA_ARCHS) -Xcompiler -Wall,-Werror -Ishared -Icluster
endif


.SECONDEXPANSION:

.PHONY: all deps test unit unit-noblas integration asan demo bench edge clean distclean libs unit-bins san-bins build-all
.DEFAULT_GOAL := all

all: deps
	$(Q)$(MAKE) --no-print-directory build-all

# The libcoap stamp alone would never rerun deps.sh on a machine set up before
# a package was added to it; a second stamp older than tools/deps.sh does.
DEPS_PKG_STAMP := $(DEPS_DIR)/.packages
deps: $(DEPS_STAMP) $(DEPS_PKG_STAMP)
$(DEPS_STAMP): $(DEPS_INPUTS)
	tools/deps.sh build $(DEPS_ARG)
	@touch $@
$(DEPS_PKG_STAMP): tools/deps.sh | $(DEPS_STAMP)
	tools/deps.sh build $(DEPS_ARG)
	@touch $@

build-all: $(LIBFEDGE) $(LIBPOLICY) $(AGG_BIN) $(EDGE_BIN) $(CLUSTER_BIN) $(TOOL_BINS) \
           $(BENCH_BINS) $(UNIT_BINS)

# ---- objects ---------------------------------------------------------------
# Cluster objects depend on the CUDA setting (-DFEDGE_HAVE_CUDA): a stamp
# named after it makes a CUDA=0 build and a CUDA=1 build never share objects.
CUDA_STAMP := $(BUILD)/.cuda-$(CUDA)
$(CUDA_STAMP):
	@mkdir -p $(BUILD)
	@rm -f $(BUILD)/.cuda-*
	@touch $@

BLAS_STAMP := $(BUILD)/.blas-$(BLAS)
$(BLAS_STAMP):
	@mkdir -p $(BUILD)
	@rm -f $(BUILD)/.blas-*
	@touch $@
$(BUILD)/obj/shared/gemm.o $(BUILD)/obj/shared/blas.o $(BUILD)/obj/tests/unit/test_blas.o: $(BLAS_STAMP)

# the edge profile's EDGE_MEM_DEFS: a stamp named after them rebuilds its
# objects when they change
ifneq ($(EDGE_PROFILE),)
EDGE_MEM_STAMP := $(BUILD)/.edge-mem-$(shell echo '$(EDGE_MEM_DEFS)' | cksum | cut -d' ' -f1)
$(EDGE_MEM_STAMP):
	@mkdir -p $(BUILD)
	@rm -f $(BUILD)/.edge-mem-*
	@touch $@
$(call obj,$(SHARED_SRC) $(EDGE_SRC) edge/main.c): $(EDGE_MEM_STAMP)
endif

$(BUILD)/obj/cluster/%.o: cluster/%.c $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	@echo "  MPICC $<"
	$(Q)OMPI_CC=$(CC) $(MPICC) $(CFLAGS) $(CUDA_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/tools/bench/mpi_%.o: tools/bench/mpi_%.c $(CUDA_STAMP)
	@mkdir -p $(dir $@)
	@echo "  MPICC $<"
	$(Q)OMPI_CC=$(CC) $(MPICC) $(CFLAGS) $(CUDA_CFLAGS) -MMD -MP -c $< -o $@

# Programs relink when tools/deps.sh rebuilds libcoap or mbedTLS (a newer
# stamp): their main objects depend on it, so the link rules' $^ stays
# objects and archives, and a build without deps yet is not forced to run it.
$(call obj,aggregator/main.c edge/main.c $(wildcard tools/*/*.c tools/bench/*.c tests/unit/*.c)): \
    $(wildcard $(DEPS_STAMP))

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

ifneq ($(EDGE_PROFILE),)
# -Os leaves the portable GEMM's micro-kernel and the model's loops
# unvectorised (the MLP trained ~7x slower than the native portable build);
# these two files are built -O2 (docs/EDGE.md, Memory)
$(BUILD)/obj/shared/gemm.o $(BUILD)/obj/shared/model.o: CFLAGS += -O2
endif

$(BUILD)/obj/%.o: %.cu
	@mkdir -p $(dir $@)
	@echo "  NVCC  $<"
	$(Q)$(NVCC) $(NVCCFLAGS) -c $< -o $@

# ---- libraries -------------------------------------------------------------
define static_lib
$(1): $(2)
	@mkdir -p $$(dir $$@)
	@echo "  AR    $$@"
	$(Q)rm -f $$@ && $(AR) rcs $$@ $$^
endef
$(eval $(call static_lib,$(LIBFEDGE),$(call obj,$(SHARED_SRC))))
$(eval $(call static_lib,$(LIBPOLICY),$(call obj,$(POLICY_SRC))))
$(eval $(call static_lib,$(LIBAGG),$(call obj,$(AGG_SRC))))
$(eval $(call static_lib,$(LIBEDGE),$(call obj,$(EDGE_SRC))))
$(eval $(call static_lib,$(LIBCLUSTER),$(call obj,$(CLUSTER_SRC)) $(CU_OBJ)))

# ---- programs --------------------------------------------------------------
ALL_LIBS := $(LIBAGG) $(LIBEDGE) $(LIBPOLICY) $(LIBFEDGE)

$(BIN)/fedge-aggregator: $(call obj,aggregator/main.c) $(LIBAGG) $(LIBEDGE) $(LIBPOLICY) $(LIBFEDGE)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(AGG_LIBS)

$(BIN)/fedge-edge: $(call obj,edge/main.c) $(LIBEDGE) $(LIBFEDGE)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) $(EDGE_LDFLAGS) -o $@ $^ $(COAP_LIBS) $(TLS_LIBS) \
	    $(EDGE_BLAS_LIBS) $(EDGE_SYS_LIBS)

$(BIN)/fedge-cluster: $(call obj,cluster/main.c) $(LIBCLUSTER) $(LIBFEDGE)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)OMPI_CC=$(CC) $(MPICC) $(LDFLAGS) -o $@ $^ $(TLS_LIBS) $(SYS_LIBS) $(CUDA_LIBS)

$(BIN)/fedge-%: $$(call obj,$$(wildcard tools/$$*/*.c)) $(ALL_LIBS)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(SERVER_LIBS)

$(BIN)/bench-mpi_%: $(BUILD)/obj/tools/bench/mpi_%.o $(LIBCLUSTER) $(LIBFEDGE)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)OMPI_CC=$(CC) $(MPICC) $(LDFLAGS) -o $@ $^ $(TLS_LIBS) $(SYS_LIBS) $(CUDA_LIBS)

$(BIN)/bench-%: $(BUILD)/obj/tools/bench/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(SERVER_LIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ -lcmocka $(SERVER_LIBS)


# ---- fedge-model: ONNX protobuf code ----------------------------------------
# tools/model/onnx/onnx.proto (vendored, see tools/model/onnx/README.md) ->
# $(BUILD)/gen/onnx/onnx.pb-c.[ch] by protoc-c (Debian protobuf-c-compiler),
# linked with libprotobuf-c.
ONNX_PROTO := tools/model/onnx/onnx.proto
ONNX_GEN := $(BUILD)/gen/onnx
MODEL_TOOL_OBJ := $(call obj,$(wildcard tools/model/*.c))

$(ONNX_GEN)/onnx.pb-c.h: $(ONNX_GEN)/onnx.pb-c.c
$(ONNX_GEN)/onnx.pb-c.c: $(ONNX_PROTO)
	@mkdir -p $(dir $@)
	@echo "  PROTOC-C $<"
	$(Q)protoc-c --proto_path=$(dir $<) --c_out=$(ONNX_GEN) $(notdir $<)

$(BUILD)/obj/gen/onnx.pb-c.o: $(ONNX_GEN)/onnx.pb-c.c
	@mkdir -p $(dir $@)
	@echo "  CC    $<"
	$(Q)$(CC) $(CFLAGS) -I$(ONNX_GEN) -c $< -o $@

$(MODEL_TOOL_OBJ): $(ONNX_GEN)/onnx.pb-c.h
$(MODEL_TOOL_OBJ): CFLAGS += -I$(ONNX_GEN)

$(BIN)/fedge-model: $(MODEL_TOOL_OBJ) $(BUILD)/obj/gen/onnx.pb-c.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(SERVER_LIBS) -lprotobuf-c

# tests/unit/test_model_export.c also links fedge-model's format modules.
MODEL_FORMAT_OBJ := $(call obj,tools/model/json.c tools/model/layers.c tools/model/safetensors.c tools/model/npz.c)
$(BUILD)/tests/test_model_export: $(MODEL_FORMAT_OBJ)
$(BUILD)/obj/tests/unit/test_model_export.o: CFLAGS += -Itools/model

# ---- running ---------------------------------------------------------------
unit: all
	$(Q)tests/run.sh unit $(BUILD)

integration: all
	$(Q)tests/run.sh integration $(BUILD)

# The sanitizer build covers the unit tests and the daemon, edge and tools;
# tests/run.sh runs the unit tests and the network integration scripts
# (e2e, crash/resume, interop) against it too.
unit-bins: $(UNIT_BINS)
san-bins: $(UNIT_BINS) $(AGG_BIN) $(EDGE_BIN) $(TOOL_BINS)

# The unit tests again on the portable kernel (BLAS=none), so both GEMM paths
# are tested; build/noblas keeps its objects apart from build/native.
unit-noblas: deps
	$(Q)$(MAKE) --no-print-directory BLAS=none BUILD=build/noblas unit-bins
	$(Q)tests/run.sh unit build/noblas

asan: deps
	$(Q)$(MAKE) --no-print-directory SAN=1 unit-bins
	$(Q)FEDGE_TEST_QUICK=1 tests/run.sh unit build/asan

# the cross edges (and their trimmed mbedTLS/libcoap) are built here, not
# inside tests/integration/cross_edge.sh's time; so is the same edge for this
# machine (EDGE_TRIM=1), whose heap tests/integration/edge_memory.sh measures
# make test builds with TEST_JOBS compilers at once (default: the cores),
# unless make itself was given -j.
CROSS_EDGES := aarch64-linux-gnu arm-linux-gnueabihf
TEST_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
TEST_J = $(if $(filter -j%,$(MAKEFLAGS)),,-j$(TEST_JOBS))
test:
	$(Q)$(MAKE) --no-print-directory $(TEST_J) all
	$(Q)for c in $(CROSS_EDGES); do \
	    $(MAKE) --no-print-directory $(TEST_J) CROSS=$$c BUILD=build/$$c BLAS=none edge || exit 1; done
	$(Q)$(MAKE) --no-print-directory $(TEST_J) EDGE_TRIM=1 edge # the shipped edge for this machine: edge_memory.sh
	$(Q)$(MAKE) --no-print-directory $(TEST_J) BLAS=none BUILD=build/noblas build/noblas/tests/test_blas
	$(Q)build/noblas/tests/test_blas >build/noblas/test_blas.log 2>&1 || \
	    { cat build/noblas/test_blas.log; echo "test_blas failed with BLAS=none"; exit 1; }
	$(Q)$(MAKE) --no-print-directory $(TEST_J) SAN=1 san-bins
	$(Q)$(MAKE) --no-print-directory $(TEST_J) fuzz-bins
	$(Q)$(MAKE) --no-print-directory $(TEST_J) mcu || echo "make mcu failed: tests/integration/mcu_round.sh says why"
	$(Q)tests/run.sh all $(BUILD) build/asan $(FUZZ_BUILD)

demo: all
	$(Q)$(if $(MODEL),DEMO_SPEC='$(MODEL)') tools/demo.sh $(BUILD)

bench: all
	$(Q)tools/bench/run.sh $(BUILD)

edge: deps
	$(Q)$(MAKE) --no-print-directory $(LIBFEDGE) $(EDGE_BIN)

# ---- test helper programs --------------------------------------------------
# tests/tools/<name>.c -> $(BUILD)/tests/tools/<name>, for integration scripts
# (recompute: every aggregate model recomputed from the log, kill_storm.sh).
TEST_TOOL_BINS := $(patsubst tests/tools/%.c,$(BUILD)/tests/tools/%,$(wildcard tests/tools/*.c))
build-all: $(TEST_TOOL_BINS)

$(TEST_TOOL_BINS): $(BUILD)/tests/tools/%: $(BUILD)/obj/tests/tools/%.o $(LIBFEDGE)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(SERVER_LIBS)

# ---- fuzzing (clang + libFuzzer) -------------------------------------------
# tests/fuzz/fuzz_<name>.c -> build/fuzz/fuzz_<name>, one libFuzzer target
# each, over the library compiled with clang and coverage + ASan + UBSan.
# Seeds: tests/fuzz/corpus/<name>/ (committed; crash regressions go there
# too) and build/fuzz/seeds/<name>/ (written by tests/fuzz/mkseeds.c).
# `make fuzz` runs each target FUZZ_TIME seconds; `make test` runs each for
# a few seconds (tests/run.sh, FEDGE_FUZZ_TIME).
FUZZ_CC ?= clang
FUZZ_BUILD := build/fuzz
FUZZ_TIME ?= 60
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := $(CFLAGS_BASE) -Itests/fuzz -Itools/model $(FUZZ_SAN) -fsanitize=fuzzer-no-link
FUZZ_LIB_SRC := $(SHARED_SRC) $(POLICY_SRC) aggregator/config.c edge/round_info.c edge/observe.c \
                aggregator/combine.c $(wildcard aggregator/combine/*.c) \
                aggregator/server_opt.c $(wildcard aggregator/server_opt/*.c) \
                tools/model/json.c tools/model/layers.c tools/model/safetensors.c \
                tools/model/input.c aggregator/round_config.c
FUZZ_LIB_SRC += aggregator/upload.c
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(FUZZ_SRC))
FUZZ_LIB := $(FUZZ_BUILD)/lib/libfedge_fuzz.a
FUZZ_LIBS := $(TLS_LIBS) -lsqlite3 -lyaml $(SYS_LIBS)
fuzz_obj = $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(1))

.PHONY: fuzz fuzz-bins
fuzz: deps
	$(Q)$(MAKE) --no-print-directory fuzz-bins
	$(Q)FEDGE_FUZZ_TIME=$(FUZZ_TIME) tests/run.sh fuzz $(FUZZ_BUILD)

fuzz-bins: $(FUZZ_BINS) $(FUZZ_BUILD)/seeds/.stamp

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  FUZZCC $<"
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@

$(eval $(call static_lib,$(FUZZ_LIB),$(call fuzz_obj,$(FUZZ_LIB_SRC))))

$(FUZZ_BINS): $(FUZZ_BUILD)/%: $(FUZZ_BUILD)/obj/tests/fuzz/%.o $(FUZZ_LIB)
	@echo "  LD    $@"
	$(Q)$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(FUZZ_LIBS)

$(FUZZ_BUILD)/mkseeds: $(FUZZ_BUILD)/obj/tests/fuzz/mkseeds.o $(FUZZ_LIB)
	@echo "  LD    $@"
	$(Q)$(FUZZ_CC) $(FUZZ_SAN) -o $@ $^ $(FUZZ_LIBS)

$(FUZZ_BUILD)/seeds/.stamp: $(FUZZ_BUILD)/mkseeds
	$(Q)rm -rf $(FUZZ_BUILD)/seeds && $(FUZZ_BUILD)/mkseeds $(FUZZ_BUILD)/seeds && touch $@

-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)

clean:
	rm -rf build/native build/noblas build/asan build/aarch64-linux-gnu build/arm-linux-gnueabihf build/fuzz build/cortex-m4

distclean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# tests/unit/test_edgesim_plan.c also links fedge-edgesim's pure module (ahead of the libraries).
$(BUILD)/tests/test_edgesim_plan: $(BUILD)/obj/tests/unit/test_edgesim_plan.o \
                                  $(call obj,tools/edgesim/plan.c) $(ALL_LIBS)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ -lcmocka $(SERVER_LIBS)
$(BUILD)/obj/tests/unit/test_edgesim_plan.o: CFLAGS += -Itools/edgesim

# ---- the bare-metal Cortex-M4F core (mcu/, docs/EDGE.md "Bare-metal core") ----
# tools/deps.sh build mcu installs arm-none-eabi-gcc, newlib and qemu-system-arm
# (only for this target) and fetches Debian's mbedTLS source; the host tool
# generates each firmware's round inputs; mcu/mcu.mk builds build/cortex-m4.
.PHONY: mcu
mcu:
	tools/deps.sh build mcu
	$(Q)$(MAKE) --no-print-directory $(BUILD)/tests/tools/mcu_round
	$(Q)$(MAKE) --no-print-directory -f mcu/mcu.mk HOST_BUILD=$(BUILD)

# tests/unit/test_mcu_core.c runs mcu/core.c on the host (ahead of the libraries).
$(BUILD)/tests/test_mcu_core: $(BUILD)/obj/tests/unit/test_mcu_core.o $(call obj,mcu/core.c) $(ALL_LIBS)
	@mkdir -p $(dir $@)
	@echo "  LD    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ -lcmocka $(SERVER_LIBS)
$(BUILD)/obj/tests/unit/test_mcu_core.o: CFLAGS += -Imcu
