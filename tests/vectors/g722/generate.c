/*
 * Generator of the G.722 reference vectors in this folder. It is a record of
 * where they come from; CI does not build it.
 *
 * The reference is spandsp's G.722 (Steve Underwood's, the one Asterisk and
 * FreeSWITCH use), which is independent of the audio-codec crate under test.
 * Built and run on Debian 12 with libspandsp-dev 0.0.6+dfsg-2+b1:
 *
 *     apt-get install libspandsp-dev
 *     gcc -O2 -Wall -o generate generate.c -lspandsp -lm
 *     ./generate .            # writes the four vector files into the given folder
 *
 * That spandsp build was first checked against the ITU-T G.722 Appendix II
 * digital test sequences T1C2.XMT -> T2R2.COD and T2R2.COD -> T3L2.RC1 /
 * T3H2.RC0 (mode 1, QMF bypassed): 768 of 768 codes and samples equal.
 *
 * Files (no headers):
 *   input-16k.raw    8320 int16 LE samples at 16 kHz (0.52 s), the test signal
 *   encoded-64k.g722 4160 bytes: g722_encode(64000 bit/s, options 0) of it,
 *                    one 8-bit code per byte (RFC 3551 G722 payload order)
 *   decoded-16k.raw  8320 int16 LE samples: g722_decode(64000, options 0) of
 *                    encoded-64k.g722
 *   encoded-64k-det128.g722
 *                    4160 bytes: as encoded-64k.g722 but with the encoder's
 *                    DETL/DETH reset values set to 128/32 (see below)
 * Encoder and decoder each start from their initial state at sample 0 and
 * run over the whole file in 20 ms (320-sample / 160-byte) calls.
 */
#define SPANDSP_EXPOSE_INTERNAL_STRUCTURES   /* for the det128 variant */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <spandsp.h>

#define N 8320      /* 0.52 s at 16 kHz, 26 frames of 20 ms */
#define FS 16000.0
#define FRAME 320   /* 20 ms */

static int16_t clip(double v)
{
    long r = lround(v);
    if (r > 32767) r = 32767;
    if (r < -32768) r = -32768;
    return (int16_t) r;
}

static void write_file(const char *dir, const char *name, const void *data, size_t bytes)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

/* int16 to little-endian bytes, whatever the host's order. */
static void to_le(const int16_t *s, uint8_t *b, int n)
{
    for (int i = 0; i < n; i++) {
        b[2 * i] = (uint8_t) ((uint16_t) s[i] & 0xFF);
        b[2 * i + 1] = (uint8_t) ((uint16_t) s[i] >> 8);
    }
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : ".";
    static int16_t x[N], y[N];
    static uint8_t code[N / 2], code2[N / 2], le[2 * N];
    uint32_t lcg = 12345;
    int i;

    for (i = 0; i < N; i++) {
        double t = i / FS;
        double v;
        if (i < 3200) {
            /* 200 ms linear chirp 50 Hz -> 7 kHz */
            double T = 3200 / FS, f0 = 50.0, f1 = 7000.0;
            v = 12000.0 * sin(2 * M_PI * (f0 * t + (f1 - f0) * t * t / (2 * T)));
        } else if (i < 4480) {
            /* 80 ms of four tones: 440 Hz, 1 kHz, 3 kHz, 6 kHz */
            v = 4000.0 * (sin(2 * M_PI * 440 * t) + sin(2 * M_PI * 1000 * t)
                          + sin(2 * M_PI * 3000 * t) + sin(2 * M_PI * 6000 * t));
        } else if (i < 5120) {
            v = 0.0;                                   /* 40 ms digital silence */
        } else if (i < 5760) {
            v = ((i / 16) & 1) ? -32768.0 : 32767.0;   /* 40 ms full-scale 500 Hz square */
        } else if (i < 6400) {
            v = 32767.0 * sin(2 * M_PI * 1000 * t);    /* 40 ms full-scale 1 kHz sine */
        } else if (i < 7040) {
            v = (i & 1) ? -32768.0 : 32767.0;          /* 40 ms full-scale fs/2 (8 kHz) */
        } else if (i < 7680) {
            lcg = lcg * 1103515245u + 12345u;          /* 40 ms full-scale white noise */
            v = (double) (int16_t) (lcg >> 16);
        } else {
            lcg = lcg * 1103515245u + 12345u;          /* 40 ms low-level noise, +-64 */
            v = (double) ((int) ((lcg >> 16) & 127) - 64);
        }
        x[i] = clip(v);
    }

    g722_encode_state_t *enc = g722_encode_init(NULL, 64000, 0);
    int nb = 0;
    for (i = 0; i < N; i += FRAME)
        nb += g722_encode(enc, code + nb, x + i, FRAME);

    /* The same, from a non-standard reset state: the lower and higher band
       scale factors (DETL, DETH) start at 128 and 32 instead of G.722's 32 and
       8, which is how audio-codec 0.4.13's G722Encoder::new() starts. */
    g722_encode_state_t *enc2 = g722_encode_init(NULL, 64000, 0);
    enc2->band[0].det = 32 << 2;
    enc2->band[1].det = 8 << 2;
    int nb2 = 0;
    for (i = 0; i < N; i += FRAME)
        nb2 += g722_encode(enc2, code2 + nb2, x + i, FRAME);
    g722_decode_state_t *dec = g722_decode_init(NULL, 64000, 0);
    int ns = 0;
    for (i = 0; i < nb; i += FRAME / 2)
        ns += g722_decode(dec, y + ns, code + i, FRAME / 2);
    if (nb != N / 2 || nb2 != N / 2 || ns != N) {
        fprintf(stderr, "unexpected lengths %d %d %d\n", nb, nb2, ns);
        return 1;
    }

    to_le(x, le, N);
    write_file(dir, "input-16k.raw", le, 2 * N);
    write_file(dir, "encoded-64k.g722", code, N / 2);
    write_file(dir, "encoded-64k-det128.g722", code2, N / 2);
    to_le(y, le, N);
    write_file(dir, "decoded-16k.raw", le, 2 * N);
    printf("wrote %d samples, %d bytes, %d samples to %s\n", N, nb, ns, dir);
    return 0;
}
