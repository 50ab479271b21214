/* Philox4x32-10 normals on the CPU: the compiled path of sdesolve/philox.py.
 *
 * For sample b and quad q (one Philox call per four normals):
 *   key     = (stream[b] mod 2^32, stream[b] >> 32)
 *   counter = (q, step[b * step_stride] mod 2^32, draw mod 2^32, 0)   (step_stride 0: one counter)
 *   (r0, r1, r2, r3) = Philox4x32-10(counter, key)            (Salmon et al., SC 2011)
 *   u(r)    = float32(min(r, r ^ 0xFFFFFFFF)) * 4.6566127342e-10f (Triton's uint -> [0, 1) map)
 *   rho_a   = sqrt(-2 log max(u(r0), 1e-7)),  theta_a = float32(2 pi) * u(r1)     (float32)
 *   z[b, 4q .. 4q+3] = rho_a cos theta_a, rho_a sin theta_a, rho_b cos theta_b, rho_b sin theta_b
 * with (rho_b, theta_b) from (r2, r3); only z[b, i] for i < n is written (out is (B, n)).
 *
 * The integers are those of the eager path bit for bit. The float32 operations are those of
 * the eager path in the same order (no reassociation, no contraction: build with
 * -ffp-contract=off and without -ffast-math); log, sin and cos are the C library's, vectorised
 * with glibc's libmvec where the build declares them SIMD (SDESOLVE_MVEC), so the normals agree
 * with the eager path to a few ulp of those functions.
 *
 * Work goes in blocks of BLOCK Philox calls, each phase a loop over the block that the compiler
 * vectorises: the 32x32 -> 64-bit products of the rounds, then the uniforms, log and sqrt, cos
 * and sin, and last the interleaved stores.
 */
#include <stdint.h>

float logf(float);
float sinf(float);
float cosf(float);
float sqrtf(float);
#ifdef SDESOLVE_MVEC
/* the vector variants exist in libmvec (x86-64 glibc >= 2.22); declaring them lets GCC call them */
float logf(float) __attribute__((__simd__("notinbranch")));
float sinf(float) __attribute__((__simd__("notinbranch")));
float cosf(float) __attribute__((__simd__("notinbranch")));
#endif

#define BLOCK 64
#define ROUND_A 0xD2511F53u
#define ROUND_B 0xCD9E8D57u
#define KEY_A 0x9E3779B9u
#define KEY_B 0xBB67AE85u
#define UNIFORM_SCALE 4.6566127342e-10f
#define TWO_PI 6.283185307179586f

static inline float uniform(uint32_t r)
{
    uint32_t m = r ^ 0xFFFFFFFFu;
    m = r < m ? r : m;
    return (float)(int32_t)m * UNIFORM_SCALE;
}

void sdesolve_philox_normals(const int64_t *stream, const int64_t *step, int64_t step_stride, uint32_t draw,
                             int64_t B, int64_t n, float *out)
{
    const int64_t quads = (n + 3) / 4, total = B * quads;
    const int pairs = n > 2 ? 2 : 1; /* with n <= 2 the second pair is never stored */
    uint32_t c0s[BLOCK], c1s[BLOCK], k0s[BLOCK], k1s[BLOCK];
    uint32_t w0[BLOCK], w1[BLOCK], w2[BLOCK], w3[BLOCK];
    float ra[BLOCK], rb[BLOCK], ta[BLOCK], tb[BLOCK];
    float ca[BLOCK], sa[BLOCK], cb[BLOCK], sb[BLOCK];

    for (int64_t j0 = 0; j0 < total; j0 += BLOCK) {
        const int len = (int)(total - j0 < BLOCK ? total - j0 : BLOCK);
        int64_t b = j0 / quads, q = j0 - b * quads;
        for (int l = 0; l < BLOCK; l++) { /* counters and keys of the block's calls */
            if (l < len) {
                c0s[l] = (uint32_t)q;
                c1s[l] = (uint32_t)step[b * step_stride];
                k0s[l] = (uint32_t)stream[b];
                k1s[l] = (uint32_t)((uint64_t)stream[b] >> 32);
                if (++q == quads) { q = 0; b++; }
            } else {
                c0s[l] = c1s[l] = k0s[l] = k1s[l] = 0;
            }
        }
        for (int l = 0; l < BLOCK; l++) {
            uint32_t c0 = c0s[l], c1 = c1s[l], c2 = draw, c3 = 0, k0 = k0s[l], k1 = k1s[l];
            for (int r = 0; r < 10; r++) {
                uint64_t pb = (uint64_t)c2 * ROUND_B, pa = (uint64_t)c0 * ROUND_A;
                c0 = (uint32_t)(pb >> 32) ^ c1 ^ k0;
                c2 = (uint32_t)(pa >> 32) ^ c3 ^ k1;
                c1 = (uint32_t)pb;
                c3 = (uint32_t)pa;
                k0 += KEY_A;
                k1 += KEY_B;
            }
            w0[l] = c0; w1[l] = c1; w2[l] = c2; w3[l] = c3;
        }
        for (int l = 0; l < BLOCK; l++) {
            float u0 = uniform(w0[l]), u2 = uniform(w2[l]);
            ra[l] = u0 > 1e-7f ? u0 : 1e-7f;
            rb[l] = u2 > 1e-7f ? u2 : 1e-7f;
            ta[l] = TWO_PI * uniform(w1[l]);
            tb[l] = TWO_PI * uniform(w3[l]);
        }
        for (int l = 0; l < BLOCK; l++) ra[l] = logf(ra[l]);
        for (int l = 0; l < BLOCK; l++) ra[l] = sqrtf(-2.0f * ra[l]);
        for (int l = 0; l < BLOCK; l++) ca[l] = cosf(ta[l]);
        for (int l = 0; l < BLOCK; l++) sa[l] = sinf(ta[l]);
        if (pairs == 2) {
            for (int l = 0; l < BLOCK; l++) rb[l] = logf(rb[l]);
            for (int l = 0; l < BLOCK; l++) rb[l] = sqrtf(-2.0f * rb[l]);
            for (int l = 0; l < BLOCK; l++) cb[l] = cosf(tb[l]);
            for (int l = 0; l < BLOCK; l++) sb[l] = sinf(tb[l]);
        }
        b = j0 / quads;
        q = j0 - b * quads;
        for (int l = 0; l < len; l++) {
            const int64_t i0 = 4 * q, m = n - i0;
            float *o = out + b * n + i0;
            o[0] = ra[l] * ca[l];
            if (m > 1) o[1] = ra[l] * sa[l];
            if (m > 2) o[2] = rb[l] * cb[l];
            if (m > 3) o[3] = rb[l] * sb[l];
            if (++q == quads) { q = 0; b++; }
        }
    }
}
