/*
 * llama2bin's C consumer check.
 *
 * Memory-maps a llama2.c .bin file of version 0, 1 (the seed's Q8_0 v1, or llama2.c master's
 * float32 v1, "1f": group_size 0) or 2 the way llama2.c's run.c (v0) and runq.c (v2) do - weight pointers straight into the mapping, nothing copied - runs one
 * forward pass per position of a token sequence with a KV cache, and prints the logits of
 * every position. It shares no code with llama2bin's Python reader, so agreement between
 * the two proves the file is consumable from C, not merely self-consistent.
 *
 * usage: consumer [--mode f32|q8] [--dump PATH] [--theta X | --rope tables] [--logits text|binary] FILE.bin TOKEN...
 *   --mode f32  float32 arithmetic; Q8_0 weights are dequantized (q * scale) as they are used
 *   --mode q8   (v1/v2 only) runq.c's arithmetic: activations are quantized to Q8_0 with the
 *               file's group size before every matmul, products are summed as int32 per group
 *               and scaled by both group scales
 *   default: f32 for float32 files (v0, 1f), q8 for Q8_0 ones (v1, v2).
 *   --dump PATH (q8 only) writes every activation quantization it performs to PATH, so the
 *               Python reference can check each one and continue from it (checks/ccheck.py):
 *     header: 8 bytes "L2BQDMP1", then int32 n_positions, n_layers, dim, hidden_dim, group_size;
 *     then for each position, for each layer the four sites in order - 0 attention input (shared
 *     by wq/wk/wv, dim), 1 attention output before wo (dim), 2 ffn input (shared by w1/w3, dim),
 *     3 ffn hidden before w2 (hidden_dim) - and last the final norm before the classifier (dim);
 *     each site as float32 x[n] (the values before quantization), float32 scales[n / group_size],
 *     int8 q[n]. Native byte order (the machine that runs the check reads it).
 * stdout: one line per position, vocab_size logits printed with %.9g (exact for float32);
 *   with --logits binary, the same float32 values raw, vocab_size per position, native byte order
 *   (what checks/ccheck.py reads: printing and parsing 1M numbers per file cost more than the forward).
 *   --theta X   RoPE computed at base X (default 10000, run.c/runq.c's; 500000 is the Llama 3 ports')
 *   --rope tables  (v0 only) RoPE read from the file's freqs_cos/freqs_sin, as the ports that read
 *               the tables do (pair j of a head at position pos: freqs_cos[pos * head_size / 2 + j])
 * Like run.c and runq.c it assumes norm_eps 1e-5: the files do not store it.
 * Exit status 1 with one line on stderr for anything it refuses.
 */

#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "consumer_map.h"

/* ---- arithmetic ---------------------------------------------------------------------- */

typedef struct {
    int8_t *q;
    float *s;
} QVec;

/* runq.c's activation quantization: per group scale = max|x| / 127, q = round(x / scale)
 * (half away from zero). An all-zero group gets scale 0 and q 0 instead of 0/0. */
static FILE *g_dump; /* --dump: every quantization is appended here (see the header comment) */

static void dump_write(const void *p, size_t size, size_t count) {
    if (fwrite(p, size, count, g_dump) != count) die("cannot write the --dump file");
}

static void quantize_vec(QVec *out, const float *x, int n, int gs) {
    for (int g = 0; g < n / gs; g++) {
        float wmax = 0.0f;
        for (int i = 0; i < gs; i++) {
            float a = fabsf(x[g * gs + i]);
            if (a > wmax) wmax = a;
        }
        float scale = wmax / 127.0f;
        out->s[g] = scale;
        for (int i = 0; i < gs; i++) out->q[g * gs + i] = scale == 0.0f ? 0 : (int8_t)roundf(x[g * gs + i] / scale);
    }
    if (g_dump) {
        dump_write(x, sizeof *x, (size_t)n);
        dump_write(out->s, sizeof *out->s, (size_t)(n / gs));
        dump_write(out->q, 1, (size_t)n);
    }
}

/* out[d] = W[d, n] @ x[n]. For Q8_0 weights in f32 mode each weight is dequantized to
 * q * scale (a float32 product, exactly what the Python reader returns) before the multiply. */
static void matvec_f32(float *out, const Weight *w, const float *x, int n, int d, int gs) {
    int i = 0;
    if (w->f) {
        /* Four rows at a time, each summed in run.c's order (j = 0, 1, ...): the same bits as one
         * row at a time, but four independent chains of additions instead of one, which the CPU
         * overlaps (a float add waits for the previous one otherwise): a quarter less time for a 15M
         * v0, measured, where reading the weights is the rest. */
        for (; i + 4 <= d; i += 4) {
            const float *w0 = w->f + (size_t)i * n, *w1 = w0 + n, *w2 = w1 + n, *w3 = w2 + n;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            for (int j = 0; j < n; j++) {
                a0 += w0[j] * x[j];
                a1 += w1[j] * x[j];
                a2 += w2[j] * x[j];
                a3 += w3[j] * x[j];
            }
            out[i] = a0, out[i + 1] = a1, out[i + 2] = a2, out[i + 3] = a3;
        }
    }
    for (; i < d; i++) {
        float acc = 0.0f;
        size_t row = (size_t)i * n;
        if (w->f) {
            for (int j = 0; j < n; j++) acc += w->f[row + j] * x[j];
        } else {
            for (int j = 0; j < n; j++) {
                float wij = (float)w->q[row + j] * scale_at(w, (row + j) / gs);
                acc += wij * x[j];
            }
        }
        out[i] = acc;
    }
}

/* runq.c's matmul: int32 dot product per group of quantized activations and weights, then
 * val += ival * weight_scale * activation_scale, group after group. */
static void matvec_q8(float *out, const Weight *w, const QVec *x, int n, int d, int gs) {
    for (int i = 0; i < d; i++) {
        size_t row = (size_t)i * n;
        float acc = 0.0f;
        for (int j = 0; j < n; j += gs) {
            int32_t ival = 0;
            for (int k = 0; k < gs; k++) ival += (int32_t)x->q[j + k] * (int32_t)w->q[row + j + k];
            acc += ((float)ival) * scale_at(w, (row + j) / gs) * x->s[j / gs];
        }
        out[i] = acc;
    }
}

static void rmsnorm(float *out, const float *x, const float *weight, int n) {
    float ss = 0.0f;
    for (int j = 0; j < n; j++) ss += x[j] * x[j];
    ss = 1.0f / sqrtf(ss / n + 1e-5f);
    for (int j = 0; j < n; j++) out[j] = weight[j] * (ss * x[j]);
}

static void softmax(float *x, int n) {
    float mx = x[0], sum = 0.0f;
    for (int i = 1; i < n; i++)
        if (x[i] > mx) mx = x[i];
    for (int i = 0; i < n; i++) sum += (x[i] = expf(x[i] - mx));
    for (int i = 0; i < n; i++) x[i] /= sum;
}

typedef struct {
    float *x, *xb, *xb2, *hb, *hb2, *q, *k, *v, *att, *logits, *key_cache, *value_cache;
    QVec xq, hq;
} State;

static void alloc_state(State *s, const Params *p) {
    size_t kv = kv_dim(p), cache = (size_t)p->n_layers * p->seq_len * kv;
    s->x = xcalloc(p->dim, 4), s->xb = xcalloc(p->dim, 4), s->xb2 = xcalloc(p->dim, 4);
    s->hb = xcalloc(p->hidden_dim, 4), s->hb2 = xcalloc(p->hidden_dim, 4);
    s->q = xcalloc(p->dim, 4), s->k = xcalloc(kv, 4), s->v = xcalloc(kv, 4);
    s->att = xcalloc((size_t)p->seq_len, 4), s->logits = xcalloc(p->vocab_size, 4);
    s->key_cache = xcalloc(cache, 4), s->value_cache = xcalloc(cache, 4);
    s->xq.q = xcalloc(p->dim, 1), s->xq.s = xcalloc(p->dim, 4);
    s->hq.q = xcalloc(p->hidden_dim, 1), s->hq.s = xcalloc(p->hidden_dim, 4);
}

/* out = W @ x in the chosen arithmetic; `xq` is x quantized once and shared by the matmuls
 * that read the same activations (as runq.c does). */
static void matmul(const Model *m, int q8, float *out, const Weight *w, const float *x, QVec *xq, int n, int d) {
    if (q8)
        matvec_q8(out, w, xq, n, d, m->group_size);
    else
        matvec_f32(out, w, x, n, d, m->group_size);
}

static void embed(const Model *m, float *x, int token) {
    size_t dim = m->p.dim, first = (size_t)token * dim;
    if (m->tok.f) {
        memcpy(x, m->tok.f + first, dim * sizeof *x);
        return;
    }
    for (size_t j = 0; j < dim; j++) x[j] = (float)m->tok.q[first + j] * scale_at(&m->tok, (first + j) / m->group_size);
}

static float g_theta = 10000.0f; /* --theta */
static int g_rope_tables;         /* --rope tables */

static void forward(const Model *m, State *s, int q8, int token, int pos) {
    const Params *p = &m->p;
    int dim = p->dim, hid = p->hidden_dim, hs = dim / p->n_heads, kv = (int)kv_dim(p);
    int kv_mul = p->n_heads / p->n_kv_heads, gs = m->group_size;
    embed(m, s->x, token);
    for (int l = 0; l < p->n_layers; l++) {
        rmsnorm(s->xb, s->x, m->rms_att + (size_t)l * dim, dim);
        if (q8) quantize_vec(&s->xq, s->xb, dim, gs);
        matmul(m, q8, s->q, &m->wq[l], s->xb, &s->xq, dim, dim);
        matmul(m, q8, s->k, &m->wk[l], s->xb, &s->xq, dim, kv);
        matmul(m, q8, s->v, &m->wv[l], s->xb, &s->xq, dim, kv);
        /* rotary embedding on adjacent pairs of every head (k has fewer heads with GQA) */
        for (int i = 0; i < dim; i += 2) {
            float c, sn;
            if (g_rope_tables) {
                size_t at = (size_t)pos * (hs / 2) + (size_t)(i % hs) / 2;
                c = m->freqs_cos[at], sn = m->freqs_sin[at];
            } else {
                float freq = 1.0f / powf(g_theta, (float)(i % hs) / (float)hs);
                float angle = pos * freq;
                c = cosf(angle), sn = sinf(angle);
            }
            for (int which = 0; which < (i < kv ? 2 : 1); which++) {
                float *vec = which == 0 ? s->q : s->k;
                float a = vec[i], b = vec[i + 1];
                vec[i] = a * c - b * sn;
                vec[i + 1] = a * sn + b * c;
            }
        }
        size_t layer_off = (size_t)l * p->seq_len * kv;
        memcpy(s->key_cache + layer_off + (size_t)pos * kv, s->k, kv * sizeof(float));
        memcpy(s->value_cache + layer_off + (size_t)pos * kv, s->v, kv * sizeof(float));
        for (int h = 0; h < p->n_heads; h++) {
            const float *qh = s->q + h * hs;
            size_t kv_off = (size_t)(h / kv_mul) * hs; /* query head h reads kv head h / kv_mul */
            for (int t = 0; t <= pos; t++) {
                const float *kt = s->key_cache + layer_off + (size_t)t * kv + kv_off;
                float score = 0.0f;
                for (int i = 0; i < hs; i++) score += qh[i] * kt[i];
                s->att[t] = score / sqrtf((float)hs);
            }
            softmax(s->att, pos + 1);
            float *out = s->xb + h * hs;
            memset(out, 0, hs * sizeof(float));
            for (int t = 0; t <= pos; t++) {
                const float *vt = s->value_cache + layer_off + (size_t)t * kv + kv_off;
                for (int i = 0; i < hs; i++) out[i] += s->att[t] * vt[i];
            }
        }
        if (q8) quantize_vec(&s->xq, s->xb, dim, gs);
        matmul(m, q8, s->xb2, &m->wo[l], s->xb, &s->xq, dim, dim);
        for (int i = 0; i < dim; i++) s->x[i] += s->xb2[i];

        rmsnorm(s->xb, s->x, m->rms_ffn + (size_t)l * dim, dim);
        if (q8) quantize_vec(&s->xq, s->xb, dim, gs);
        matmul(m, q8, s->hb, &m->w1[l], s->xb, &s->xq, dim, hid);
        matmul(m, q8, s->hb2, &m->w3[l], s->xb, &s->xq, dim, hid);
        for (int i = 0; i < hid; i++) s->hb[i] = s->hb[i] * (1.0f / (1.0f + expf(-s->hb[i]))) * s->hb2[i];
        if (q8) quantize_vec(&s->hq, s->hb, hid, gs);
        matmul(m, q8, s->xb, &m->w2[l], s->hb, &s->hq, hid, dim);
        for (int i = 0; i < dim; i++) s->x[i] += s->xb[i];
    }
    rmsnorm(s->x, s->x, m->rms_final, dim);
    if (q8) quantize_vec(&s->xq, s->x, dim, gs);
    matmul(m, q8, s->logits, &m->cls, s->x, &s->xq, dim, p->vocab_size);
}

int main(int argc, char **argv) {
    int arg = 1, mode = -1; /* -1: the format's default; 0: f32; 1: q8 */
    const char *dump_path = NULL;
    int binary = 0;
    while (arg + 1 < argc && (strcmp(argv[arg], "--mode") == 0 || strcmp(argv[arg], "--dump") == 0 ||
                              strcmp(argv[arg], "--theta") == 0 || strcmp(argv[arg], "--rope") == 0 ||
                              strcmp(argv[arg], "--logits") == 0)) {
        if (strcmp(argv[arg], "--dump") == 0)
            dump_path = argv[arg + 1];
        else if (strcmp(argv[arg], "--logits") == 0) {
            if (strcmp(argv[arg + 1], "binary") == 0)
                binary = 1;
            else if (strcmp(argv[arg + 1], "text") != 0) {
                fprintf(stderr, "consumer: --logits is text or binary, not %s\n", argv[arg + 1]);
                return 2;
            }
        }
        else if (strcmp(argv[arg], "--theta") == 0) {
            char *end;
            g_theta = strtof(argv[arg + 1], &end);
            if (*end || end == argv[arg + 1] || !(g_theta > 1.0f) || !isfinite(g_theta)) {
                fprintf(stderr, "consumer: --theta is a number above 1, not %s\n", argv[arg + 1]);
                return 2;
            }
        } else if (strcmp(argv[arg], "--rope") == 0) {
            if (strcmp(argv[arg + 1], "tables") != 0) {
                fprintf(stderr, "consumer: --rope takes only 'tables', not %s\n", argv[arg + 1]);
                return 2;
            }
            g_rope_tables = 1;
        }
        else if (strcmp(argv[arg + 1], "f32") == 0)
            mode = 0;
        else if (strcmp(argv[arg + 1], "q8") == 0)
            mode = 1;
        else {
            fprintf(stderr, "consumer: --mode is f32 or q8, not %s\n", argv[arg + 1]);
            return 2;
        }
        arg += 2;
    }
    if (argc - arg < 2) {
        fprintf(stderr, "usage: consumer [--mode f32|q8] [--dump PATH] [--theta X | --rope tables] [--logits text|binary] "
                        "FILE.bin TOKEN...\n");
        return 2;
    }
    g_path = argv[arg];
    Model m = {0};
    open_model(&m, argv[arg++]);
    if (mode < 0) mode = m.quantized;
    if (g_rope_tables && !m.freqs_cos) die("--rope tables needs a v0 file (the only version with rope tables)");
    if (mode == 1 && !m.quantized) die("--mode q8 needs a Q8_0 file (v1 or v2), this is float32 (v0 or 1f)");
    if (mode == 1 && m.p.hidden_dim % m.group_size)
        die("hidden_dim %d is not a multiple of group_size %d: runq.c's grouped matmul cannot run it", m.p.hidden_dim,
            m.group_size);
    int n_tokens = argc - arg;
    if (n_tokens > m.p.seq_len) die("%d tokens exceed max_seq_len %d", n_tokens, m.p.seq_len);
    if (dump_path) {
        if (mode != 1) die("--dump records q8 activations: it needs --mode q8");
        g_dump = fopen(dump_path, "wb");
        if (!g_dump) die("cannot create the --dump file");
        int32_t head[5] = {n_tokens, m.p.n_layers, m.p.dim, m.p.hidden_dim, m.group_size};
        dump_write("L2BQDMP1", 1, 8);
        dump_write(head, sizeof head[0], 5);
    }
    State s;
    alloc_state(&s, &m.p);
    for (int pos = 0; pos < n_tokens; pos++) {
        char *end;
        long token = strtol(argv[arg + pos], &end, 10);
        if (*end || end == argv[arg + pos] || token < 0 || token >= m.p.vocab_size)
            die("token %s is not an id below vocab_size %d", argv[arg + pos], m.p.vocab_size);
        forward(&m, &s, mode, (int)token, pos);
        if (binary) {
            if (fwrite(s.logits, sizeof s.logits[0], (size_t)m.p.vocab_size, stdout) != (size_t)m.p.vocab_size)
                die("cannot write the logits");
        } else {
            for (int i = 0; i < m.p.vocab_size; i++) printf(i ? " %.9g" : "%.9g", s.logits[i]);
            putchar('\n');
        }
    }
    fprintf(stderr, "consumer: %s: v%d, dim %d, %d layers, %d/%d heads, vocab %d, %s classifier, %s arithmetic\n", g_path,
            m.version, m.p.dim, m.p.n_layers, m.p.n_heads, m.p.n_kv_heads, m.p.vocab_size, m.shared ? "shared" : "separate",
            mode ? "q8 (runq.c)" : "f32");
    if (g_rope_tables)
        fprintf(stderr, "consumer: RoPE from the file's tables\n");
    else
        fprintf(stderr, "consumer: RoPE at theta %g\n", (double)g_theta);
    if (fflush(stdout) != 0) die("cannot write the logits");
    if (g_dump && fclose(g_dump) != 0) die("cannot write the --dump file");
    return 0;
}
