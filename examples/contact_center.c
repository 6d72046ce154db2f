/*
 * A contact-center call in C: a customer calls in over SIP, an agent takes
 * the call from the application, and a supervisor coaches the agent:
 *
 *   listen   the supervisor hears the call; nobody hears the supervisor
 *   whisper  only the agent hears the supervisor
 *   barge    everyone hears the supervisor
 *
 * The call is recorded: the mix to DIR/call.wav and each participant's own
 * audio to DIR/call-ID.wav. The mix is what everyone hears, so a whisper is
 * not in it (the customer did not hear it either); the supervisor's own
 * file holds the whisper, for coaching reviews.
 *
 * Everything runs in this process over real SIP and RTP on loopback: the
 * customer's phone is a second endpoint that dials sip:call@127.0.0.1:PORT.
 * Each party says a tone (customer 500 Hz, agent 800 Hz, supervisor
 * 1200 Hz), so the program can tell who heard whom. In each phase it
 * measures what the customer, the agent and the supervisor hear, then what
 * the recordings hold, prints it all and exits 1 if anything is wrong.
 *
 * Usage: contact_center [--base-port N] [--phase-seconds S] [--record-dir DIR]
 * Ports: SIP on N (the contact center) and N+1 (the customer's phone), RTP
 * on N+10..N+29 and N+30..N+49. Default N: 49200.
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sipbridge.h"

#define RATE 16000           /* wideband: plenty for a phone call */
#define FRAME (RATE / 50)    /* 20 ms */
#define SETTLE_FRAMES 25     /* 0.5 s after a change is left out of the measures */
#define MAX_PHASE_SECONDS 10

static const double PI = 3.14159265358979323846;

enum { CUSTOMER, AGENT, SUPERVISOR, PARTIES };
static const char *const PARTY[PARTIES] = {"customer", "agent", "supervisor"};
static const double TONE_HZ[PARTIES] = {500.0, 800.0, 1200.0};

enum { LISTEN, WHISPER, BARGE, PHASES };
static const char *const PHASE[PHASES] = {"listen", "whisper", "barge"};

/* What each listener must hear of each party, per phase (true: heard). */
enum { AT_CUSTOMER, AT_AGENT, AT_SUPERVISOR, IN_MIX_FILE, IN_SUPERVISOR_FILE, LISTENERS };
static const char *const LISTENER[LISTENERS] = {"customer hears", "agent hears", "supervisor hears",
                                                "call.wav holds", "supervisor's file holds"};
static const bool EXPECTED[PHASES][LISTENERS][PARTIES] = {
    [LISTEN] = {{0, 1, 0}, {1, 0, 0}, {1, 1, 0}, {1, 1, 0}, {0, 0, 0}},
    [WHISPER] = {{0, 1, 0}, {1, 0, 1}, {1, 1, 0}, {1, 1, 0}, {0, 0, 1}},
    [BARGE] = {{0, 1, 1}, {1, 0, 1}, {1, 1, 0}, {1, 1, 1}, {0, 0, 1}},
};
/* A tone is heard above HEARD_DB and absent below ABSENT_DB (sine amplitude, dB full scale). */
#define HEARD_DB (-30.0)
#define ABSENT_DB (-50.0)

static int fail(const char *what, sb_status status) {
  char msg[256];
  sb_last_error(msg, sizeof msg);
  fprintf(stderr, "%s: %s (%s)\n", what, sb_status_name(status), msg);
  return 1;
}

/* Returns from main, saying why, when a call fails. */
#define TRY(what, call)                               \
  do {                                                \
    sb_status status_ = (call);                       \
    if (status_ != SB_OK) return fail(what, status_); \
  } while (0)

/* The level of a tone in `pcm`, as the amplitude of a sine in dB full scale (Goertzel, Hann window). */
static double tone_db(const int16_t *pcm, size_t n, double hz) {
  double coeff = 2.0 * cos(2.0 * PI * hz / RATE), s1 = 0, s2 = 0, window_sum = 0;
  for (size_t i = 0; i < n; i++) {
    double w = 0.5 - 0.5 * cos(2.0 * PI * (double)i / (double)(n - 1));
    double s0 = w * pcm[i] + coeff * s1 - s2;
    s2 = s1;
    s1 = s0;
    window_sum += w;
  }
  double magnitude = sqrt(fmax(s1 * s1 + s2 * s2 - coeff * s1 * s2, 0.0));
  return 20.0 * log10(2.0 * magnitude / window_sum / 32768.0 + 1e-9);
}

/* Waits up to 10 s for an event of `kind`, skipping others. */
static sb_status wait_event(sb_endpoint *endpoint, sb_event_kind kind, sb_event *out) {
  for (int i = 0; i < 100; i++) {
    sb_status status = sb_endpoint_poll_event(endpoint, 100, out);
    if (status == SB_OK && out->kind == kind) return SB_OK;
    if (status != SB_OK && status != SB_TIMEOUT) return status;
  }
  return SB_TIMEOUT;
}

/* Drops the frames a local participant heard and nobody read yet, so that reading starts from now. */
static void drain(sb_local *local) {
  int16_t frame[FRAME];
  while (sb_local_read_frame(local, frame, FRAME, 0) == SB_OK) {
  }
}

/* Reads a mono 16-bit WAV file's samples (the whole file, at most `max`); returns how many, or -1. */
static long read_wav(const char *path, int16_t *out, size_t max) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  unsigned char header[12], chunk[8];
  long n = -1;
  if (fread(header, 1, 12, f) == 12 && !memcmp(header, "RIFF", 4) && !memcmp(header + 8, "WAVE", 4)) {
    /* Chunks follow: "fmt ", maybe others, then "data". */
    while (fread(chunk, 1, 8, f) == 8) {
      unsigned long size = chunk[4] | chunk[5] << 8 | chunk[6] << 16 | (unsigned long)chunk[7] << 24;
      if (!memcmp(chunk, "data", 4)) {
        size_t samples = size / 2 < max ? size / 2 : max;
        n = (long)fread(out, 2, samples, f); /* little-endian, as the machines this runs on */
        break;
      }
      if (fseek(f, (long)(size + (size & 1)), SEEK_CUR) != 0) break;
    }
  }
  fclose(f);
  return n;
}

/* The three parties: what each says and hears is application audio (sb_local). */
typedef struct {
  sb_local *local[PARTIES];
  unsigned long said[PARTIES]; /* samples of its tone written so far */
} call_audio;

static sb_status say_tone(call_audio *call, int party) {
  int16_t frame[FRAME];
  for (size_t i = 0; i < FRAME; i++, call->said[party]++)
    frame[i] = (int16_t)(6000.0 * sin(2.0 * PI * TONE_HZ[party] * (double)call->said[party] / RATE));
  /* Blocks while its one-second queue is full: this paces the loop in real time. */
  return sb_local_write(call->local[party], frame, FRAME, 1000);
}

int main(int argc, char **argv) {
  int base_port = 49200;
  double phase_seconds = 2.0;
  const char *record_dir = ".";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--base-port") && i + 1 < argc) base_port = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--phase-seconds") && i + 1 < argc) phase_seconds = atof(argv[++i]);
    else if (!strcmp(argv[i], "--record-dir") && i + 1 < argc) record_dir = argv[++i];
    else {
      fprintf(stderr, "usage: %s [--base-port N] [--phase-seconds S] [--record-dir DIR]\n", argv[0]);
      return 2;
    }
  }
  if (base_port < 1024 || base_port > 65535 - 50 || phase_seconds < 1.0 || phase_seconds > MAX_PHASE_SECONDS) {
    fprintf(stderr, "--base-port must be 1024-65485, --phase-seconds 1-%d\n", MAX_PHASE_SECONDS);
    return 2;
  }
  const size_t phase_frames = (size_t)(phase_seconds * 50);

  /* The contact center: room "call", where the customer's call lands. */
  char listen[32], uri[64];
  snprintf(listen, sizeof listen, "127.0.0.1:%d", base_port);
  sb_endpoint_config config;
  sb_endpoint_config_init(&config);
  config.listen = listen;
  config.rtp_port_min = (uint16_t)(base_port + 10);
  config.rtp_port_max = (uint16_t)(base_port + 29);
  config.sample_rate = RATE;
  config.create_rooms_on_demand = false;
  sb_endpoint *center = NULL;
  TRY("start the contact center", sb_endpoint_start(&config, &center));
  sb_conference *room = NULL;
  call_audio call = {0};
  TRY("create the room", sb_endpoint_create_conference(center, "call", &room));
  TRY("add the agent", sb_conference_add_local(room, &call.local[AGENT]));

  /* The customer's phone, which says and hears through its own local participant. */
  char phone_listen[32];
  snprintf(phone_listen, sizeof phone_listen, "127.0.0.1:%d", base_port + 1);
  config.listen = phone_listen;
  config.rtp_port_min = (uint16_t)(base_port + 30);
  config.rtp_port_max = (uint16_t)(base_port + 49);
  sb_endpoint *phone = NULL;
  sb_conference *handset = NULL;
  uint64_t leg = 0;
  TRY("start the customer's phone", sb_endpoint_start(&config, &phone));
  TRY("create the handset", sb_endpoint_create_conference(phone, "customer", &handset));
  TRY("add the customer", sb_conference_add_local(handset, &call.local[CUSTOMER]));
  snprintf(uri, sizeof uri, "sip:call@127.0.0.1:%d", base_port);
  TRY("dial", sb_conference_dial(handset, uri, &leg));
  sb_event event;
  do TRY("the customer's call in the room", wait_event(center, SB_EVENT_PARTICIPANT_JOINED, &event));
  while (event.participant_kind != SB_PARTICIPANT_INBOUND); /* not the agent's join */
  printf("the customer's call from %s is participant %llu\n", event.detail, (unsigned long long)event.participant);
  TRY("the customer's phone answered", wait_event(phone, SB_EVENT_ANSWERED, &event));

  /* The supervisor joins heard by nobody, before it says a word. */
  uint64_t supervisor = 0;
  TRY("add the supervisor", sb_conference_add_local(room, &call.local[SUPERVISOR]));
  TRY("supervisor id", sb_local_id(call.local[SUPERVISOR], &supervisor));
  TRY("listen", sb_conference_set_heard_only_by(room, supervisor, false, NULL, 0));

  char mix_path[512], supervisor_path[512];
  snprintf(mix_path, sizeof mix_path, "%s/call.wav", record_dir);
  snprintf(supervisor_path, sizeof supervisor_path, "%s/call-%llu.wav", record_dir, (unsigned long long)supervisor);
  for (int p = 0; p < PARTIES; p++) {
    /* Three frames queued ahead, so that no tick finds a queue empty while the loop below waits on another. */
    for (int i = 0; i < 3; i++) TRY("say", say_tone(&call, p));
    drain(call.local[p]);
  }
  TRY("record", sb_conference_start_recording(room, mix_path, true));

  /* The phases, as the supervisor's console would switch them. */
  static int16_t heard[PHASES][PARTIES][MAX_PHASE_SECONDS * RATE];
  uint64_t agent = 0;
  TRY("agent id", sb_local_id(call.local[AGENT], &agent));
  for (int phase = 0; phase < PHASES; phase++) {
    if (phase == WHISPER) TRY("whisper", sb_conference_set_heard_only_by(room, supervisor, false, &agent, 1));
    if (phase == BARGE) TRY("barge", sb_conference_set_heard_only_by(room, supervisor, true, NULL, 0));
    printf("phase %s\n", PHASE[phase]);
    for (size_t tick = 0; tick < phase_frames; tick++) {
      for (int p = 0; p < PARTIES; p++) {
        int16_t frame[FRAME];
        TRY("say", say_tone(&call, p));
        TRY("hear", sb_local_read_frame(call.local[p], frame, FRAME, 1000));
        if (tick >= SETTLE_FRAMES) memcpy(heard[phase][p] + (tick - SETTLE_FRAMES) * FRAME, frame, sizeof frame);
      }
      while (sb_endpoint_poll_event(center, 0, &event) == SB_OK) {
        if (event.kind == SB_EVENT_RECORDING_STARTED) printf("recording %s\n", event.detail);
      }
    }
  }
  TRY("stop recording", sb_conference_stop_recording(room));

  /* The recordings, cut into the same phases: one frame per tick from the first phase on. */
  static int16_t recorded[2][PHASES * MAX_PHASE_SECONDS * RATE];
  const char *files[2] = {mix_path, supervisor_path};
  for (int f = 0; f < 2; f++) {
    long n = read_wav(files[f], recorded[f], PHASES * phase_frames * FRAME);
    if (n < (long)((PHASES * phase_frames - 5) * FRAME)) {
      fprintf(stderr, "%s: %ld samples, too short\n", files[f], n);
      return 1;
    }
  }

  int wrong = 0;
  const size_t measured = (phase_frames - SETTLE_FRAMES) * FRAME;
  printf("\n%-8s %-24s %10s %10s %10s   (dB; * should be heard)\n", "phase", "", PARTY[CUSTOMER], PARTY[AGENT],
         PARTY[SUPERVISOR]);
  for (int phase = 0; phase < PHASES; phase++) {
    for (int l = 0; l < LISTENERS; l++) {
      const int16_t *pcm = l < PARTIES ? heard[phase][l]
                                       : recorded[l - IN_MIX_FILE] + (phase * phase_frames + SETTLE_FRAMES) * FRAME;
      printf("%-8s %-24s", PHASE[phase], LISTENER[l]);
      bool row_ok = true;
      for (int p = 0; p < PARTIES; p++) {
        double db = tone_db(pcm, measured, TONE_HZ[p]);
        bool expected = EXPECTED[phase][l][p], ok = expected ? db > HEARD_DB : db < ABSENT_DB;
        wrong += !ok;
        row_ok &= ok;
        printf(" %9.1f%c", db, expected ? '*' : ' ');
      }
      printf("%s\n", row_ok ? "" : "  <- WRONG");
    }
  }
  if (wrong) printf("\n%d checks failed\n", wrong);
  else printf("\nall heard as expected\n");

  for (int p = 0; p < PARTIES; p++) sb_local_free(call.local[p]);
  sb_conference_free(handset);
  sb_conference_free(room);
  sb_endpoint_free(phone);
  sb_endpoint_free(center);
  return wrong ? 1 : 0;
}
