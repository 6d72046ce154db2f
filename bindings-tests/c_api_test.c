/*
 * End-to-end test of the C ABI: two endpoints on loopback, a dial-out between
 * them, audio both ways checked by tone power, participant control, error
 * paths, the event callback, prompts, recording, conference policy, taps, whisper and breakout rooms. Built with -Wall -Wextra -Werror and run
 * under AddressSanitizer (leaks included) by bindings-tests/run-c-tests.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sipbridge.h"

/* The tests' conferences mix at 16 kHz (calls between endpoints negotiate Opus). */
#define SAMPLE_RATE 16000
#define FRAME_SAMPLES (SAMPLE_RATE / 50)

static int failures = 0;

#define CHECK(cond, ...)                                                        \
  do {                                                                          \
    if (!(cond)) {                                                              \
      char msg_[512];                                                           \
      sb_last_error(msg_, sizeof msg_);                                         \
      fprintf(stderr, "%s:%d: CHECK(%s) failed (last error: %s): ", __FILE__,   \
              __LINE__, #cond, msg_);                                           \
      fprintf(stderr, __VA_ARGS__);                                             \
      fprintf(stderr, "\n");                                                    \
      failures++;                                                               \
    }                                                                           \
  } while (0)

#define OK(call) CHECK((call) == SB_OK, "%s", #call)

static const double PI = 3.14159265358979323846;

static double tone_power(const int16_t *s, size_t n, double freq) {
  double w = 2.0 * PI * freq / SAMPLE_RATE, coeff = 2.0 * cos(w);
  double s1 = 0, s2 = 0;
  for (size_t i = 0; i < n; i++) {
    double s0 = s[i] + coeff * s1 - s2;
    s2 = s1;
    s1 = s0;
  }
  return (s1 * s1 + s2 * s2 - coeff * s1 * s2) / ((double)n * (double)n);
}

static void tone(int16_t *out, double freq, unsigned long *phase) {
  for (size_t i = 0; i < FRAME_SAMPLES; i++, (*phase)++)
    out[i] = (int16_t)(8000.0 * sin(2.0 * PI * freq * (double)*phase / SAMPLE_RATE));
}

static sb_endpoint *start(uint16_t rtp_min) {
  sb_endpoint_config config;
  sb_endpoint *endpoint = NULL;
  OK(sb_endpoint_config_init(&config));
  config.listen = "127.0.0.1:0";
  config.rtp_port_min = rtp_min;
  config.rtp_port_max = (uint16_t)(rtp_min + 19);
  config.sample_rate = SAMPLE_RATE;
  OK(sb_endpoint_start(&config, &endpoint));
  return endpoint;
}

/* Polls until an event of `kind` arrives; returns 1 and fills `out` if it did. */
static int wait_for(sb_endpoint *endpoint, sb_event_kind kind, sb_event *out) {
  for (int i = 0; i < 100; i++) {
    sb_status status = sb_endpoint_poll_event(endpoint, 100, out);
    if (status == SB_OK && out->kind == kind) return 1;
  }
  return 0;
}

typedef struct {
  atomic_int joined;
  atomic_int left;
} counters;

static void on_event(void *userdata, const sb_event *event) {
  counters *c = userdata;
  if (event->kind == SB_EVENT_PARTICIPANT_JOINED) atomic_fetch_add(&c->joined, 1);
  if (event->kind == SB_EVENT_PARTICIPANT_LEFT) atomic_fetch_add(&c->left, 1);
}

/* Prompts: a tone to one participant only, PCM to everyone, stopped; a recording. */
static void test_prompts(sb_endpoint *endpoint) {
  sb_conference *room = NULL;
  sb_local *a = NULL, *b = NULL;
  OK(sb_endpoint_create_conference(endpoint, "prompts", &room));
  OK(sb_conference_add_local(room, &a));
  OK(sb_conference_add_local(room, &b));
  uint64_t a_id = 0, playback = 0;
  OK(sb_local_id(a, &a_id));

  sb_playback *beep = NULL;
  float frequencies[] = {1000.0f};
  CHECK(sb_playback_tone(frequencies, 0, 300, -20.0f, &beep) == SB_INVALID_ARGUMENT && beep == NULL, "no frequency");
  CHECK(sb_playback_tone(NULL, 1, 300, -20.0f, &beep) == SB_NULL_PARAMETER, "NULL frequencies");
  CHECK(sb_playback_wav_file("/nonexistent.wav", &beep) == SB_IO, "missing file");
  OK(sb_playback_tone(frequencies, 1, 300, -20.0f, &beep));
  CHECK(sb_conference_play(room, beep, 999999, &playback) == SB_NOT_FOUND, "unknown participant");
  OK(sb_conference_play(room, beep, a_id, &playback));

  /* 0.3 s of 1000 Hz at -20 dBov (amplitude 4634) to a; b hears nothing. */
  static int16_t heard_a[FRAME_SAMPLES * 25], heard_b[FRAME_SAMPLES * 25];
  for (int i = 0; i < 25; i++) {
    OK(sb_local_read_frame(a, heard_a + i * FRAME_SAMPLES, FRAME_SAMPLES, 1000));
    OK(sb_local_read_frame(b, heard_b + i * FRAME_SAMPLES, FRAME_SAMPLES, 1000));
  }
  double amplitude_a = 2.0 * sqrt(tone_power(heard_a, FRAME_SAMPLES * 25, 1000));
  double amplitude_b = 2.0 * sqrt(tone_power(heard_b, FRAME_SAMPLES * 25, 1000));
  /* 0.3 s of the 0.5 s heard. */
  CHECK(fabs(amplitude_a - 4634.0 * 0.6) < 150.0, "a heard the beep at amplitude %.0f", amplitude_a);
  CHECK(amplitude_b < 1.0, "b heard %.0f", amplitude_b);
  sb_event event;
  CHECK(wait_for(endpoint, SB_EVENT_PLAYBACK_FINISHED, &event) && event.playback == playback && event.completed &&
            event.participant == a_id,
        "finished: playback %llu completed %d", (unsigned long long)event.playback, event.completed);

  /* Ten seconds of PCM for everyone, stopped early. */
  static int16_t pcm[SAMPLE_RATE * 10];
  for (size_t i = 0; i < sizeof pcm / sizeof pcm[0]; i++) pcm[i] = 1000;
  sb_playback *music = NULL;
  OK(sb_playback_pcm(pcm, sizeof pcm / sizeof pcm[0], &music));
  OK(sb_conference_play(room, music, 0, &playback));
  int16_t frame[FRAME_SAMPLES];
  for (int i = 0; i < 5; i++) OK(sb_local_read_frame(b, frame, FRAME_SAMPLES, 1000));
  OK(sb_conference_stop_playback(room, 0));
  CHECK(wait_for(endpoint, SB_EVENT_PLAYBACK_FINISHED, &event) && event.playback == playback && !event.completed &&
            event.participant == 0,
        "stopped");
  CHECK(sb_conference_play(NULL, music, 0, &playback) == SB_NULL_PARAMETER, "NULL conference");

  /* Recording: the PCM prompt to everyone, 0.2 s of it, into a WAV file. */
  char path[64];
  snprintf(path, sizeof path, "/tmp/sipbridge-c-test-%d.wav", (int)getpid());
  CHECK(sb_conference_start_recording(room, NULL, false) == SB_NULL_PARAMETER, "NULL path");
  CHECK(sb_conference_stop_recording(room) == SB_NOT_FOUND, "no recording");
  OK(sb_conference_start_recording(room, path, false));
  CHECK(wait_for(endpoint, SB_EVENT_RECORDING_STARTED, &event) && strcmp(event.detail, path) == 0, "started");
  CHECK(sb_conference_start_recording(room, path, false) == SB_ALREADY_EXISTS, "one at a time");
  OK(sb_conference_play(room, music, 0, &playback));
  for (int i = 0; i < 10; i++) OK(sb_local_read_frame(b, frame, FRAME_SAMPLES, 1000));
  OK(sb_conference_pause_recording(room, true));
  OK(sb_conference_pause_recording(room, false));
  OK(sb_conference_stop_recording(room));
  CHECK(wait_for(endpoint, SB_EVENT_RECORDING_STOPPED, &event) && event.frames_dropped == 0 &&
            strcmp(event.detail, path) == 0,
        "stopped");
  /* A finished WAV header: RIFF size and data size filled in. */
  FILE *wav = fopen(path, "rb");
  unsigned char header[44] = {0};
  CHECK(wav && fread(header, 1, 44, wav) == 44, "read the header");
  if (wav) fclose(wav);
  uint32_t data_bytes = header[40] | header[41] << 8 | header[42] << 16 | (uint32_t)header[43] << 24;
  CHECK(memcmp(header, "RIFF", 4) == 0 && data_bytes >= FRAME_SAMPLES * 2 * 8, "data: %u bytes", data_bytes);
  remove(path);
  OK(sb_conference_stop_playback(room, playback));
  sb_playback_free(music);
  sb_playback_free(beep);
  sb_playback_free(NULL);
  sb_local_free(a);
  sb_local_free(b);
  OK(sb_conference_destroy(room));
  sb_conference_free(room);
}

/* Finds participant `id` in `room`'s list; returns 1 and fills `out` if it is there. */
static int participant_info(sb_conference *room, uint64_t id, sb_participant_info *out) {
  static sb_participant_info infos[8];
  size_t count = 0;
  if (sb_conference_participants(room, infos, 8, &count) != SB_OK) return 0;
  for (size_t i = 0; i < count; i++)
    if (infos[i].id == id) {
      *out = infos[i];
      return 1;
    }
  return 0;
}

/* Conference policy and moderator actions, with local participants only. */
static void test_policy(sb_endpoint *endpoint) {
  sb_conference *room = NULL;
  OK(sb_endpoint_create_conference(endpoint, "policy", &room));
  sb_conference_policy policy;
  sb_local *a = NULL, *b = NULL;
  sb_event event;
  sb_participant_info info;
  uint64_t a_id = 0, b_id = 0;
  CHECK(sb_conference_set_policy(room, NULL) == SB_NULL_PARAMETER, "NULL policy");
  OK(sb_conference_policy_init(&policy));
  policy.pin = "1#";
  CHECK(sb_conference_set_policy(room, &policy) == SB_INVALID_ARGUMENT, "'#' ends a PIN, it is not in one");
  OK(sb_conference_policy_init(&policy));
  policy.codecs = "PCMU,speex";
  CHECK(sb_conference_set_policy(room, &policy) == SB_INVALID_ARGUMENT, "an unknown codec");
  policy.codecs = "PCMU, G722";
  OK(sb_conference_set_policy(room, &policy));
  OK(sb_conference_policy_init(&policy));
  policy.max_participants = 1;
  const float full_tone[] = {600.0f};
  sb_playback *full = NULL;
  OK(sb_playback_tone(full_tone, 1, 500, -16.0f, &full));
  policy.full_prompt = full; /* callers hear it; the app still gets SB_FULL */
  OK(sb_conference_set_policy(room, &policy));
  sb_playback_free(full);
  OK(sb_conference_add_local(room, &a));
  OK(sb_local_id(a, &a_id));
  CHECK(sb_conference_add_local(room, &b) == SB_FULL && b == NULL, "full");
  CHECK(strcmp(sb_status_name(SB_FULL), "SB_FULL") == 0, "status name");

  OK(sb_conference_policy_init(&policy));
  policy.locked = true;
  OK(sb_conference_set_policy(room, &policy));
  CHECK(wait_for(endpoint, SB_EVENT_LOCKED, &event) && event.locked, "locked");
  CHECK(sb_conference_add_local(room, &b) == SB_LOCKED && b == NULL, "locked out");
  OK(sb_conference_lock(room, false));
  CHECK(wait_for(endpoint, SB_EVENT_LOCKED, &event) && !event.locked, "unlocked");

  OK(sb_conference_policy_init(&policy));
  policy.mute_on_join = true;
  policy.pin = "12";
  OK(sb_conference_set_policy(room, &policy));
  OK(sb_conference_add_local(room, &b));
  OK(sb_local_id(b, &b_id));
  CHECK(participant_info(room, b_id, &info) && info.muted && !info.moderator &&
            info.admission == SB_ADMISSION_ADMITTED,
        "the app's participants need no PIN, and join muted");
  CHECK(wait_for(endpoint, SB_EVENT_MUTED, &event) && event.participant == b_id && event.muted,
        "joining muted is an event");
  OK(sb_conference_set_moderator(room, a_id, true));
  CHECK(wait_for(endpoint, SB_EVENT_MODERATOR_JOINED, &event) && event.participant == a_id, "moderator");
  OK(sb_conference_mute_all(room, false));
  CHECK(wait_for(endpoint, SB_EVENT_MUTED, &event) && event.participant == b_id && !event.muted, "unmuted");
  OK(sb_conference_set_deaf(room, b_id, true));
  CHECK(participant_info(room, b_id, &info) && info.deaf && !info.muted, "deaf");
  OK(sb_conference_kick(room, b_id));
  CHECK(wait_for(endpoint, SB_EVENT_PARTICIPANT_LEFT, &event) && event.participant == b_id &&
            event.reason == SB_LEAVE_KICKED,
        "kicked");
  OK(sb_conference_end(room));
  CHECK(wait_for(endpoint, SB_EVENT_CONFERENCE_ENDED, &event), "ended");
  CHECK(wait_for(endpoint, SB_EVENT_PARTICIPANT_LEFT, &event) && event.participant == a_id &&
            event.reason == SB_LEAVE_CONFERENCE_ENDED,
        "everyone hung up");
  CHECK(wait_for(endpoint, SB_EVENT_CONFERENCE_EMPTY, &event) && strcmp(event.conference, "policy") == 0, "empty");
  sb_local_free(a);
  sb_local_free(b);
  OK(sb_conference_destroy(room));
  sb_conference_free(room);
}

/* Runs 13 ticks: `n` locals each write their tone (0: silence) and read
 * what they hear; the last 10 frames go to heard[i] (the first may still
 * have been mixed before the last change). */
static void talk(sb_local **locals, const double *tones, int n, int16_t (*heard)[FRAME_SAMPLES * 10]) {
  static unsigned long phases[4];
  int16_t frame[FRAME_SAMPLES];
  for (int f = 0; f < 13; f++) {
    for (int i = 0; i < n; i++) {
      if (tones[i] > 0)
        tone(frame, tones[i], &phases[i]);
      else
        memset(frame, 0, sizeof frame);
      OK(sb_local_write(locals[i], frame, FRAME_SAMPLES, 1000));
    }
    for (int i = 0; i < n; i++) {
      OK(sb_local_read_frame(locals[i], frame, FRAME_SAMPLES, 1000));
      if (f >= 3) memcpy(heard[i] + (f - 3) * FRAME_SAMPLES, frame, sizeof frame);
    }
  }
}

/* A tap, listen / whisper / barge, and a move to a breakout room and back. */
static void test_taps_matrix_and_breakout(void) {
  sb_endpoint *endpoint = start(45960);
  sb_conference *main_room = NULL, *side = NULL;
  OK(sb_endpoint_create_conference(endpoint, "main", &main_room));
  OK(sb_endpoint_create_conference(endpoint, "side", &side));
  sb_local *locals[4] = {NULL};
  uint64_t ids[4] = {0};
  for (int i = 0; i < 4; i++) {
    OK(sb_conference_add_local(i < 3 ? main_room : side, &locals[i]));
    OK(sb_local_id(locals[i], &ids[i]));
  }
  /* Supervisor (0, 1000 Hz), agent (1), customer (2) in main; a peer (3, 600 Hz) in side. */
  static int16_t heard[4][FRAME_SAMPLES * 10];
  const double supervisor_only[4] = {1000, 0, 0, 600};
  const size_t n = FRAME_SAMPLES * 10;

  sb_tap *tap = NULL, *second = NULL;
  OK(sb_conference_tap(main_room, ids[0], &tap));
  CHECK(sb_conference_tap(main_room, ids[0], &second) == SB_ALREADY_EXISTS && second == NULL, "one tap at a time");
  talk(locals, supervisor_only, 4, heard);
  static int16_t tapped[FRAME_SAMPLES * 10];
  sb_tap_frame info = {0}, first = {0};
  for (int i = 0; i < 10; i++) {
    OK(sb_tap_read(tap, tapped + i * FRAME_SAMPLES, FRAME_SAMPLES, 1000, &info));
    if (i == 0) first = info;
  }
  CHECK(info.timestamp == first.timestamp + 9 * FRAME_SAMPLES, "timestamps %llu, %llu",
        (unsigned long long)first.timestamp, (unsigned long long)info.timestamp);
  CHECK(info.talking && tone_power(tapped, n, 1000) > 1e5, "the tap has the supervisor's tone");
  uint64_t dropped = 1;
  OK(sb_tap_frames_dropped(tap, &dropped));
  CHECK(dropped == 0, "dropped %llu", (unsigned long long)dropped);
  sb_tap_free(tap);
  sb_tap_free(NULL);

  /* Listening: nobody hears the supervisor. */
  OK(sb_conference_set_heard_only_by(main_room, ids[0], false, NULL, 0));
  talk(locals, supervisor_only, 4, heard);
  CHECK(tone_power(heard[1], n, 1000) < 1.0 && tone_power(heard[2], n, 1000) < 1.0, "nobody hears the supervisor");
  /* Whispering: the agent does, the customer does not. */
  CHECK(sb_conference_set_heard_only_by(main_room, ids[0], false, NULL, 1) == SB_NULL_PARAMETER, "NULL ids");
  OK(sb_conference_set_heard_only_by(main_room, ids[0], false, &ids[1], 1));
  talk(locals, supervisor_only, 4, heard);
  CHECK(tone_power(heard[1], n, 1000) > 1e5 && tone_power(heard[2], n, 1000) < 1.0, "a whisper to the agent");
  /* Barging: everyone does; the customer hears only the agent when asked to. */
  OK(sb_conference_set_heard_only_by(main_room, ids[0], true, NULL, 0));
  OK(sb_conference_set_hears_only(main_room, ids[2], false, &ids[1], 1));
  talk(locals, supervisor_only, 4, heard);
  CHECK(tone_power(heard[1], n, 1000) > 1e5 && tone_power(heard[2], n, 1000) < 1.0, "barge; hears only the agent");
  OK(sb_conference_set_hears_only(main_room, ids[2], true, NULL, 0));

  /* The agent goes to the side room, hears its peer, and comes back with it. */
  OK(sb_conference_move_participant(main_room, ids[1], side));
  sb_event event;
  CHECK(wait_for(endpoint, SB_EVENT_PARTICIPANT_MOVED, &event) && event.participant == ids[1] &&
            strcmp(event.conference, "side") == 0 && strcmp(event.detail, "main") == 0,
        "moved");
  CHECK(sb_conference_move_participant(main_room, ids[1], side) == SB_NOT_FOUND, "no longer in main");
  talk(locals, supervisor_only, 4, heard);
  CHECK(tone_power(heard[1], n, 600) > 1e5 && tone_power(heard[1], n, 1000) < 1.0, "the agent hears the side room");
  OK(sb_conference_move_all(side, main_room));
  talk(locals, supervisor_only, 4, heard);
  CHECK(tone_power(heard[1], n, 600) > 1e5 && tone_power(heard[1], n, 1000) > 1e5, "everyone is back");
  CHECK(sb_conference_move_all(NULL, main_room) == SB_NULL_PARAMETER, "NULL conference");

  for (int i = 0; i < 4; i++) sb_local_free(locals[i]);
  sb_conference_free(main_room);
  sb_conference_free(side);
  OK(sb_endpoint_stop(endpoint));
  sb_endpoint_free(endpoint);
}

int main(void) {
  sb_endpoint *bridge = start(24000);
  sb_endpoint *caller = start(24100);
  if (!bridge || !caller) return 1;

  /* --- argument errors, never crashes --- */
  CHECK(sb_endpoint_start(NULL, NULL) == SB_NULL_PARAMETER, "NULL config");
  char err[256];
  CHECK(sb_last_error(err, sizeof err) > 0 && strstr(err, "NULL") != NULL, "message: %s", err);
  CHECK(strcmp(sb_status_name(SB_NOT_FOUND), "SB_NOT_FOUND") == 0, "status names");
  CHECK(strcmp(sb_status_name(12345), "SB_UNKNOWN") == 0 && strcmp(sb_status_name(-1), "SB_UNKNOWN") == 0,
        "any integer is safe");
  sb_conference *none = NULL;
  CHECK(sb_endpoint_get_conference(bridge, "nope", &none) == SB_NOT_FOUND && none == NULL, "unknown room");
  CHECK(sb_endpoint_create_conference(bridge, NULL, &none) == SB_NULL_PARAMETER, "NULL name");
  sb_endpoint_config bad;
  sb_endpoint *unused = NULL;
  OK(sb_endpoint_config_init(&bad));
  bad.listen = "not an address";
  CHECK(sb_endpoint_start(&bad, &unused) == SB_INVALID_ARGUMENT && unused == NULL, "bad listen");
  OK(sb_endpoint_config_init(&bad));
  bad.listen = "127.0.0.1:0";
  bad.tls_listen = "127.0.0.1:0";
  CHECK(sb_endpoint_start(&bad, &unused) == SB_INVALID_ARGUMENT && unused == NULL, "TLS without a certificate");
  CHECK(sb_last_error(err, sizeof err) > 0 && strstr(err, "certificate") != NULL, "message: %s", err);
  bad.tls_listen = NULL;
  bad.tls_certificate = "/nonexistent/cert.pem";
  bad.tls_private_key = "/nonexistent/key.pem";
  CHECK(sb_endpoint_start(&bad, &unused) == SB_INVALID_ARGUMENT && unused == NULL, "missing certificate file");
  uint16_t tls_port = 0;
  CHECK(sb_endpoint_tls_port(bridge, &tls_port) == SB_NOT_FOUND, "no TLS listener");

  /* --- a room with a local participant on the bridge --- */
  sb_conference *room = NULL, *out = NULL, *dup = NULL;
  OK(sb_endpoint_create_conference(bridge, "room1", &room));
  CHECK(sb_endpoint_create_conference(bridge, "room1", &dup) == SB_ALREADY_EXISTS, "duplicate room");
  sb_local *at_bridge = NULL, *at_caller = NULL;
  OK(sb_conference_add_local(room, &at_bridge));
  OK(sb_endpoint_create_conference(caller, "out", &out));
  OK(sb_conference_add_local(out, &at_caller));
  sb_event event;
  uint64_t local_id = 0;
  OK(sb_local_id(at_bridge, &local_id));
  CHECK(sb_conference_set_held(room, local_id, true) == SB_NOT_FOUND, "only SIP calls can be held");
  CHECK(sb_conference_set_codec(room, local_id, "PCMA") == SB_NOT_FOUND, "only SIP calls change codec");
  CHECK(sb_conference_set_codec(room, local_id, "GSM") == SB_INVALID_ARGUMENT, "unknown codec");
  CHECK(sb_conference_set_codec(room, local_id, NULL) == SB_NULL_PARAMETER, "NULL codec");
  CHECK(sb_conference_transfer(room, local_id, NULL) == SB_NULL_PARAMETER, "NULL transfer target");
  CHECK(sb_conference_transfer(room, local_id, "sip:carol@127.0.0.1:5070") == SB_NOT_FOUND, "only SIP calls move");
  CHECK(sb_conference_answer_transfer(room, local_id, true) == SB_NOT_FOUND, "nothing to answer");
  CHECK(wait_for(bridge, SB_EVENT_PARTICIPANT_JOINED, &event) && event.participant_kind == SB_PARTICIPANT_LOCAL &&
            event.participant == local_id,
        "the local participant joined first");

  uint16_t port = 0;
  OK(sb_endpoint_local_port(bridge, &port));
  char uri[64];
  snprintf(uri, sizeof uri, "sip:room1@127.0.0.1:%u", port);
  uint64_t leg = 0;
  OK(sb_conference_dial(out, uri, &leg));
  CHECK(sb_conference_dial(out, "not a uri", &leg) == SB_INVALID_ARGUMENT, "bad URI");
  CHECK(wait_for(caller, SB_EVENT_ANSWERED, &event) && event.participant == leg, "answered");
  CHECK(wait_for(bridge, SB_EVENT_PARTICIPANT_JOINED, &event) &&
            event.participant_kind == SB_PARTICIPANT_INBOUND,
        "joined");
  CHECK(strcmp(event.conference, "room1") == 0, "conference name in event: %s", event.conference);
  uint64_t inbound = event.participant;

  /* --- audio both ways: 600 Hz from the caller, 1400 Hz from the bridge --- */
  static int16_t heard_at_bridge[SAMPLE_RATE * 2], heard_at_caller[SAMPLE_RATE * 2];
  int16_t frame[FRAME_SAMPLES];
  unsigned long pa = 0, pb = 0;
  size_t n = 0;
  for (int i = 0; i < 2; i++) {
    tone(frame, 600, &pa);
    OK(sb_local_write(at_caller, frame, FRAME_SAMPLES, 1000));
    tone(frame, 1400, &pb);
    OK(sb_local_write(at_bridge, frame, FRAME_SAMPLES, 1000));
  }
  for (int i = 0; i < 100; i++) { /* two seconds */
    tone(frame, 600, &pa);
    OK(sb_local_write(at_caller, frame, FRAME_SAMPLES, 1000));
    tone(frame, 1400, &pb);
    OK(sb_local_write(at_bridge, frame, FRAME_SAMPLES, 1000));
    OK(sb_local_read_frame(at_bridge, heard_at_bridge + n, FRAME_SAMPLES, 1000));
    OK(sb_local_read_frame(at_caller, heard_at_caller + n, FRAME_SAMPLES, 1000));
    n += FRAME_SAMPLES;
  }
  CHECK(sb_local_read_frame(at_caller, frame, 10, 0) == SB_INVALID_ARGUMENT, "wrong frame size");
  const int16_t *tail_b = heard_at_bridge + n - SAMPLE_RATE, *tail_c = heard_at_caller + n - SAMPLE_RATE;
  double b600 = tone_power(tail_b, SAMPLE_RATE, 600), b1400 = tone_power(tail_b, SAMPLE_RATE, 1400);
  double c600 = tone_power(tail_c, SAMPLE_RATE, 600), c1400 = tone_power(tail_c, SAMPLE_RATE, 1400);
  CHECK(b600 > 1e5 && b600 > 100 * b1400, "bridge hears the caller only: %g %g", b600, b1400);
  CHECK(c1400 > 1e5 && c1400 > 100 * c600, "caller hears the bridge only: %g %g", c600, c1400);

  /* --- participant control --- */
  sb_participant_info infos[4];
  size_t count = 0;
  OK(sb_conference_participants(room, infos, 4, &count));
  CHECK(count == 2, "two participants, got %zu", count);
  CHECK(sb_conference_participants(room, infos, 1, &count) == SB_BUFFER_TOO_SMALL && count == 2, "too small");
  OK(sb_conference_set_muted(room, inbound, true));
  OK(sb_conference_set_volume_db(room, inbound, -6.0f));
  OK(sb_conference_participants(room, infos, 4, &count));
  int found = 0;
  for (size_t i = 0; i < count; i++)
    if (infos[i].id == inbound) {
      found = 1;
      CHECK(infos[i].muted && fabsf(infos[i].volume_db + 6.0f) < 0.01f, "mute and volume stick");
      CHECK(infos[i].packets_received > 50, "RTP arrived: %llu", (unsigned long long)infos[i].packets_received);
      CHECK(strstr(infos[i].remote, "sip:out@") != NULL, "remote: %s", infos[i].remote);
    }
  CHECK(found, "inbound participant listed");
  CHECK(sb_conference_set_muted(room, 987654321, true) == SB_NOT_FOUND, "stale participant id");
  /* RNNoise works at 48 kHz only; this room mixes at SAMPLE_RATE. */
  CHECK(sb_conference_set_noise_suppression(room, true) == SB_INVALID_ARGUMENT, "noise suppression at 16 kHz");
  CHECK(sb_participant_set_noise_suppression(room, inbound, true) == SB_INVALID_ARGUMENT, "per participant too");
  sb_conference *wide = NULL;
  OK(sb_endpoint_create_conference_with_rate(bridge, "wide", 48000, &wide));
  OK(sb_conference_set_noise_suppression(wide, true));
  sb_local *wide_local = NULL;
  OK(sb_conference_add_local(wide, &wide_local));
  OK(sb_conference_participants(wide, infos, 4, &count));
  CHECK(count == 1 && infos[0].noise_suppression, "a new participant inherits noise suppression");
  OK(sb_participant_set_noise_suppression(wide, infos[0].id, false));
  CHECK(!infos[0].talking, "a silent local participant is not talking");
  CHECK(sb_conference_set_talker_policy(wide, -60.0f, -30.0f, 400, 4) == SB_INVALID_ARGUMENT, "stop above start");
  OK(sb_conference_set_talker_policy(wide, -40.0f, -50.0f, 400, 0));
  OK(sb_conference_participants(wide, infos, 4, &count));
  CHECK(!infos[0].noise_suppression, "and it can be switched off for one participant");
  sb_local_free(wide_local);
  OK(sb_conference_destroy(wide));
  sb_conference_free(wide);
  sb_conference *other = NULL;
  OK(sb_endpoint_create_conference(bridge, "room2", &other));
  CHECK(sb_conference_set_muted(other, inbound, true) == SB_NOT_FOUND, "participant of another room");
  sb_conference_free(other);

  /* --- the mix feed --- */
  sb_frame_reader *mix = NULL;
  OK(sb_conference_mixed_audio(room, &mix));
  OK(sb_frame_reader_read(mix, frame, FRAME_SAMPLES, 1000));
  sb_frame_reader_free(mix);

  /* --- DTMF both ways: the caller presses 5, the bridge hears it --- */
  OK(sb_conference_send_dtmf(out, leg, "5"));
  CHECK(sb_conference_send_dtmf(out, leg, "5x") == SB_INVALID_ARGUMENT, "not a digit");
  CHECK(wait_for(bridge, SB_EVENT_DTMF, &event) && event.digit == '5' && event.duration_ms == 100 &&
            event.participant == inbound,
        "dtmf event");

  /* --- hang up; both sides see it --- */
  OK(sb_conference_hangup(out, leg));
  CHECK(wait_for(caller, SB_EVENT_PARTICIPANT_LEFT, &event) && event.reason == SB_LEAVE_LOCAL_HANGUP, "caller left");
  CHECK(wait_for(bridge, SB_EVENT_PARTICIPANT_LEFT, &event) && event.reason == SB_LEAVE_REMOTE_HANGUP &&
            event.packets_received > 50,
        "bridge saw the BYE");
  CHECK(sb_conference_hangup(out, leg) == SB_NOT_FOUND, "hanging up twice");

  /* --- callback delivery, on its own thread --- */
  counters c = {0, 0};
  OK(sb_endpoint_set_event_callback(bridge, on_event, &c));
  OK(sb_conference_dial(out, uri, &leg));
  for (int i = 0; i < 100 && atomic_load(&c.joined) == 0; i++) sb_local_read_frame(at_caller, frame, FRAME_SAMPLES, 50);
  CHECK(atomic_load(&c.joined) == 1, "callback saw the join");

  /* --- destroying the conference hangs up; the stale handle says so --- */
  OK(sb_conference_destroy(room));
  for (int i = 0; i < 100 && atomic_load(&c.left) < 2; i++) sb_local_read_frame(at_caller, frame, FRAME_SAMPLES, 50);
  CHECK(atomic_load(&c.left) == 2, "both bridge participants left, got %d", atomic_load(&c.left));
  CHECK(sb_conference_set_muted(room, inbound, false) == SB_NOT_FOUND, "destroyed room");
  CHECK(sb_conference_destroy(room) == SB_NOT_FOUND, "destroying twice");
  OK(sb_endpoint_set_event_callback(bridge, NULL, NULL));

  /* --- the caller registers an account with the bridge's registrar --- */
  OK(sb_endpoint_add_user(bridge, "alice", "secret"));
  char registrar[64];
  snprintf(registrar, sizeof registrar, "sip:127.0.0.1:%u", port);
  sb_account account = {"sip:alice@sipbridge", registrar, NULL, "secret", NULL, 0, "from-registrar"};
  uint64_t account_id = 0;
  CHECK(sb_endpoint_register_account(caller, NULL, &account_id) == SB_NULL_PARAMETER, "NULL account");
  account.password = NULL;
  CHECK(sb_endpoint_register_account(caller, &account, &account_id) == SB_INVALID_ARGUMENT, "no secret");
  account.password = "secret";
  OK(sb_endpoint_register_account(caller, &account, &account_id));
  CHECK(wait_for(caller, SB_EVENT_REGISTRATION, &event) && event.account == account_id &&
            event.registration == SB_REGISTRATION_REGISTERED && event.expires == 3600,
        "registered: %d %u", (int)event.registration, event.expires);
  char contacts[256];
  size_t contacts_needed = 0;
  CHECK(sb_endpoint_registrations(bridge, "alice", contacts, 1, &contacts_needed) == SB_BUFFER_TOO_SMALL &&
            contacts_needed > 1,
        "the contacts' size: %zu", contacts_needed);
  OK(sb_endpoint_registrations(bridge, "alice", contacts, sizeof contacts, NULL));
  CHECK(strncmp(contacts, "<sip:", 5) == 0 || strncmp(contacts, "sip:", 4) == 0, "alice's contact: %s", contacts);
  OK(sb_endpoint_registrations(bridge, "nobody", contacts, sizeof contacts, NULL));
  CHECK(contacts[0] == 0, "no registration, no line");
  OK(sb_endpoint_unregister_account(caller, account_id));
  CHECK(wait_for(caller, SB_EVENT_REGISTRATION, &event) && event.registration == SB_REGISTRATION_UNREGISTERED,
        "unregistered");
  CHECK(sb_endpoint_unregister_account(caller, account_id) == SB_NOT_FOUND, "unregistering twice");
  test_prompts(bridge);

  /* --- a room a caller's INVITE creates takes the endpoint's room policy --- */
  {
    sb_conference_policy room_policy;
    OK(sb_conference_policy_init(&room_policy));
    room_policy.pin = "5";
    sb_endpoint_config pinned_config;
    OK(sb_endpoint_config_init(&pinned_config));
    pinned_config.listen = "127.0.0.1:0";
    pinned_config.rtp_port_min = 24200;
    pinned_config.rtp_port_max = 24219;
    pinned_config.sample_rate = SAMPLE_RATE;
    pinned_config.room_policy = &room_policy;
    sb_endpoint *pinned = NULL;
    OK(sb_endpoint_start(&pinned_config, &pinned));
    uint16_t pinned_port = 0;
    OK(sb_endpoint_local_port(pinned, &pinned_port));
    char pinned_uri[64];
    snprintf(pinned_uri, sizeof pinned_uri, "sip:new-room@127.0.0.1:%u", pinned_port);
    uint64_t knock = 0;
    OK(sb_conference_dial(out, pinned_uri, &knock));
    CHECK(wait_for(pinned, SB_EVENT_PARTICIPANT_JOINED, &event), "the caller made the room");
    sb_conference *made = NULL;
    OK(sb_endpoint_get_conference(pinned, "new-room", &made));
    sb_participant_info pinned_info;
    CHECK(participant_info(made, event.participant, &pinned_info) && pinned_info.admission == SB_ADMISSION_ENTERING_PIN,
          "its first caller is asked for the PIN");
    OK(sb_conference_hangup(out, knock));
    sb_conference_free(made);
    OK(sb_endpoint_stop(pinned));
    sb_endpoint_free(pinned);
  }
  test_policy(bridge);

  test_taps_matrix_and_breakout();

  /* --- stop: handles stay safe and say STOPPED --- */
  OK(sb_endpoint_stop(caller));
  CHECK(sb_conference_dial(out, uri, &leg) == SB_STOPPED, "dial after stop");
  CHECK(sb_local_write(at_caller, frame, FRAME_SAMPLES, 0) == SB_STOPPED, "write after stop");

  sb_local_free(at_bridge);
  sb_local_free(at_caller);
  sb_conference_free(room);
  sb_conference_free(out);
  sb_endpoint_free(bridge);
  sb_endpoint_free(caller);
  sb_endpoint_free(NULL);

  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("c_api_test: all checks passed\n");
  return 0;
}
