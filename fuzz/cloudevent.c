/*
 * cloudevent.c: libFuzzer target for the CloudEvent decoding path: the JSON validator in
 * engine/event.c (herald_json_valid, which also decides whether a webhook body is kept as
 * JSON) and the structured-mode decoder the JetStream bus applies to every fetched message
 * and stored event, and the drain's spill file to its lines (herald_event_from_json). An event
 * that decodes must have valid JSON data (or none) and encode back (herald_event_to_json) to
 * valid JSON that decodes to the same event.
 */
#include "event.h"
#include "buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* an exact-size copy, so that ASan sees any read past the end */
  char *text = malloc(size ? size : 1);
  memcpy(text, data, size);
  int depth = size ? (data[0] % 8) + 1 : 1;
  (void)herald_json_valid(text, size, depth);

  const char *why = NULL;
  herald_event *ev = herald_event_from_json(text, size, &why);
  if (!ev) {
    if (!why) {
      fprintf(stderr, "fuzz: herald_event_from_json failed without a reason\n");
      abort();
    }
  } else {
    /* data_len 0: a CloudEvent without "data" (no data at all, not null) */
    if (ev->data_len && !herald_json_valid(ev->data, ev->data_len, 256)) {
      fprintf(stderr, "fuzz: decoded data is not JSON: %s\n", ev->data);
      abort();
    }
    herald_buf b = HERALD_BUF_INIT;
    herald_event_to_json(ev, &b);
    if (!herald_json_valid(b.data, b.len, 257)) {
      fprintf(stderr, "fuzz: re-encoded event is not JSON: %.*s\n", (int)b.len, b.data);
      abort();
    }
    const char *why2 = NULL;
    herald_event *ev2 = herald_event_from_json(b.data, b.len, &why2);
    if (!ev2 || strcmp(ev2->source, ev->source) != 0 || strcmp(ev2->subject, ev->subject) != 0 ||
        ev2->data_len != ev->data_len || memcmp(ev2->data, ev->data, ev->data_len) != 0) {
      fprintf(stderr, "fuzz: the event does not survive a round trip (%s): %.*s\n",
              ev2 ? "fields differ" : why2, (int)b.len, b.data);
      abort();
    }
    herald_event_unref(ev2);
    herald_buf_free(&b);
    herald_event_unref(ev);
  }
  free(text);
  return 0;
}
