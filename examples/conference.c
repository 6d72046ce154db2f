/*
 * A conference server in C: room "lobby" with a bot that plays a 440 Hz tone
 * and prints who joins and leaves. Call it with any SIP phone:
 *   sip:lobby@127.0.0.1:5080
 *
 * Usage: conference [--listen IP:PORT] [--seconds N] [--self-test]
 * --self-test also dials into the lobby from a second endpoint and checks
 * that the caller hears the bot's tone.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sipbridge.h"

/* Conferences mix at the default rate (48 kHz): 960-sample frames. */
#define FRAME_SAMPLES (SB_DEFAULT_SAMPLE_RATE / 50)

static const double PI = 3.14159265358979323846;

static int fail(const char *what, sb_status status) {
  char msg[256];
  sb_last_error(msg, sizeof msg);
  fprintf(stderr, "%s: %s (%s)\n", what, sb_status_name(status), msg);
  return 1;
}

static void print_event(const sb_event *e) {
  switch (e->kind) {
    case SB_EVENT_PARTICIPANT_JOINED:
      printf("joined  %s participant=%llu %s\n", e->conference, (unsigned long long)e->participant, e->detail);
      break;
    case SB_EVENT_PARTICIPANT_LEFT:
      printf("left    %s participant=%llu reason=%d packets in=%llu out=%llu\n", e->conference,
             (unsigned long long)e->participant, (int)e->reason, (unsigned long long)e->packets_received,
             (unsigned long long)e->packets_sent);
      break;
    case SB_EVENT_DIAL_FAILED:
      printf("failed  %s participant=%llu %u %s\n", e->conference, (unsigned long long)e->participant, e->status,
             e->detail);
      break;
    default:
      break;
  }
  fflush(stdout);
}

int main(int argc, char **argv) {
  const char *listen = "127.0.0.1:5080";
  int seconds = 30, self_test = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--listen") && i + 1 < argc) listen = argv[++i];
    else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--self-test")) self_test = 1;
  }
  if (self_test) listen = "127.0.0.1:0";

  sb_endpoint_config config;
  sb_endpoint_config_init(&config);
  config.listen = listen;
  sb_endpoint *server = NULL;
  sb_status status = sb_endpoint_start(&config, &server);
  if (status != SB_OK) return fail("start", status);

  sb_conference *lobby = NULL;
  sb_local *bot = NULL;
  if ((status = sb_endpoint_create_conference(server, "lobby", &lobby)) != SB_OK) return fail("create", status);
  if ((status = sb_conference_add_local(lobby, &bot)) != SB_OK) return fail("add bot", status);
  uint16_t port = 0;
  sb_endpoint_local_port(server, &port);
  printf("listening: call sip:lobby@127.0.0.1:%u\n", port);

  /* The optional caller, for --self-test. */
  sb_endpoint *phone = NULL;
  sb_conference *home = NULL;
  sb_local *ear = NULL;
  if (self_test) {
    config.listen = "127.0.0.1:0";
    config.rtp_port_min = 32000;
    config.rtp_port_max = 32019;
    char uri[64];
    uint64_t id;
    snprintf(uri, sizeof uri, "sip:lobby@127.0.0.1:%u", port);
    if ((status = sb_endpoint_start(&config, &phone)) != SB_OK) return fail("phone", status);
    sb_endpoint_create_conference(phone, "phone", &home);
    sb_conference_add_local(home, &ear);
    if ((status = sb_conference_dial(home, uri, &id)) != SB_OK) return fail("dial", status);
  }

  static int16_t heard[SB_DEFAULT_SAMPLE_RATE];
  size_t heard_n = 0;
  unsigned long phase = 0;
  int16_t frame[FRAME_SAMPLES];
  for (int tick = 0; tick < seconds * 50; tick++) {
    for (size_t i = 0; i < FRAME_SAMPLES; i++, phase++)
      frame[i] = (int16_t)(6000.0 * sin(2.0 * PI * 440.0 * (double)phase / SB_DEFAULT_SAMPLE_RATE));
    /* Blocks while the queue is full: this paces the bot in real time. */
    if ((status = sb_local_write(bot, frame, FRAME_SAMPLES, 1000)) != SB_OK) return fail("write", status);
    sb_local_read_frame(bot, frame, FRAME_SAMPLES, 0); /* the bot does not listen */
    if (ear && sb_local_read_frame(ear, frame, FRAME_SAMPLES, 0) == SB_OK) {
      memcpy(heard + heard_n, frame, sizeof frame);
      heard_n = (heard_n + FRAME_SAMPLES) % SB_DEFAULT_SAMPLE_RATE;
    }
    sb_event event;
    while (sb_endpoint_poll_event(server, 0, &event) == SB_OK) print_event(&event);
  }

  int result = 0;
  if (self_test) {
    double w = 2.0 * PI * 440.0 / SB_DEFAULT_SAMPLE_RATE, coeff = 2.0 * cos(w), s1 = 0, s2 = 0;
    for (size_t i = 0; i < SB_DEFAULT_SAMPLE_RATE; i++) {
      double s0 = heard[i] + coeff * s1 - s2;
      s2 = s1;
      s1 = s0;
    }
    double power = (s1 * s1 + s2 * s2 - coeff * s1 * s2) / ((double)SB_DEFAULT_SAMPLE_RATE * SB_DEFAULT_SAMPLE_RATE);
    printf("caller heard 440 Hz at power %.0f\n", power);
    result = power > 1e5 ? 0 : 1;
    sb_local_free(ear);
    sb_conference_free(home);
    sb_endpoint_free(phone);
  }
  sb_local_free(bot);
  sb_conference_free(lobby);
  sb_endpoint_free(server);
  return result;
}
