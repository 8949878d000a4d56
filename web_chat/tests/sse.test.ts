import { describe, expect, it } from "vitest";
import { createSSEParser, readSSE, type SSEMessage } from "@/lib/sse";

function parse(chunks: string[]): SSEMessage[] {
  const out: SSEMessage[] = [];
  const parser = createSSEParser((m) => out.push(m));
  for (const chunk of chunks) parser.feed(chunk);
  parser.end();
  return out;
}

/** A turn as sse-starlette writes it: CRLF line ends, a keep-alive comment, JSON data. */
const TURN =
  'event: meta\r\ndata: {"conversation_id":"c1","user_message_id":"u1","assistant_message_id":"a1"}\r\n\r\n' +
  ": ping - 2025-01-01 00:00:00\r\n\r\n" +
  'event: thinking\r\ndata: {"delta":"Let me see"}\r\n\r\n' +
  'event: token\r\ndata: {"delta":"Héllo 👋"}\r\n\r\n' +
  'event: done\r\ndata: {"finish_reason":"stop"}\r\n\r\n';

const TURN_EVENTS = [
  { event: "meta", data: '{"conversation_id":"c1","user_message_id":"u1","assistant_message_id":"a1"}', id: null },
  { event: "thinking", data: '{"delta":"Let me see"}', id: null },
  { event: "token", data: '{"delta":"Héllo 👋"}', id: null },
  { event: "done", data: '{"finish_reason":"stop"}', id: null },
];

describe("createSSEParser", () => {
  it("parses a whole stream fed at once", () => {
    expect(parse([TURN])).toEqual(TURN_EVENTS);
  });

  it("gives the same events however the stream is split into two chunks", () => {
    for (let cut = 0; cut <= TURN.length; cut++) {
      expect(parse([TURN.slice(0, cut), TURN.slice(cut)]), `cut at ${cut}`).toEqual(TURN_EVENTS);
    }
  });

  it("gives the same events when fed one character at a time", () => {
    expect(parse([...TURN])).toEqual(TURN_EVENTS);
  });

  it("accepts LF, CRLF and lone CR line ends, mixed, even with CR and LF in different chunks", () => {
    const text = "event: a\ndata: 1\n\nevent: b\r\ndata: 2\r\n\r\nevent: c\rdata: 3\r\r";
    const expected = [
      { event: "a", data: "1", id: null },
      { event: "b", data: "2", id: null },
      { event: "c", data: "3", id: null },
    ];
    expect(parse([text])).toEqual(expected);
    expect(parse(["event: b\r", "\ndata: 2\r", "\n\r", "\n"])).toEqual([expected[1]]);
    // a lone CR that ends a chunk is a line end when the next chunk does not start with LF
    expect(parse(["data: x\r", "data: y\r", "\r"])).toEqual([{ event: "message", data: "x\ny", id: null }]);
  });

  it("joins multi-line data with newlines and keeps empty data lines", () => {
    expect(parse(["data: line one\ndata: line two\ndata:\ndata: end\n\n"])).toEqual([
      { event: "message", data: "line one\nline two\n\nend", id: null },
    ]);
  });

  it("strips exactly one space after the colon and treats a bare field name as empty", () => {
    expect(parse(["data:  two spaces\n\ndata:none\n\ndata\n\n"])).toEqual([
      { event: "message", data: " two spaces", id: null },
      { event: "message", data: "none", id: null },
      { event: "message", data: "", id: null },
    ]);
  });

  it("ignores comments, unknown fields and retry, and keeps the last id", () => {
    expect(parse([": hello\nretry: 3000\nfoo: bar\nid: 7\nevent: token\n: mid-event comment\ndata: x\n\n"])).toEqual([
      { event: "token", data: "x", id: "7" },
    ]);
  });

  it("resets the event name after each dispatch and skips events without data", () => {
    expect(parse(["event: meta\n\ndata: plain\n\n"])).toEqual([{ event: "message", data: "plain", id: null }]);
  });

  it("drops an event the stream ended before finishing", () => {
    expect(parse(['event: token\ndata: {"delta":"a"}\n\nevent: token\ndata: {"delta":"b"}\n'])).toEqual([
      { event: "token", data: '{"delta":"a"}', id: null },
    ]);
  });

  it("skips a byte order mark at the start only", () => {
    expect(parse(["\uFEFFdata: a\n\n"])).toEqual([{ event: "message", data: "a", id: null }]);
    // later on, a BOM is part of the field name ("\uFEFFdata"), an unknown field, so that line is ignored
    expect(parse(["data: a\n\n", "\uFEFFdata: b\n\n"])).toEqual([{ event: "message", data: "a", id: null }]);
  });
});

function byteStream(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<SSEMessage[]> {
  const out: SSEMessage[] = [];
  for await (const message of readSSE(stream)) out.push(message);
  return out;
}

describe("readSSE", () => {
  it("decodes UTF-8 characters split across network chunks", async () => {
    const bytes = new TextEncoder().encode(TURN);
    // cut inside the 4-byte emoji and inside the 2-byte é
    const emoji = bytes.indexOf(0xf0);
    const accent = bytes.indexOf(0xc3);
    const cuts = [0, accent + 1, emoji + 2, emoji + 3, bytes.length].sort((a, b) => a - b);
    const chunks = cuts.slice(1).map((end, i) => bytes.slice(cuts[i], end));
    expect(await collect(byteStream(chunks))).toEqual(TURN_EVENTS);
  });

  it("gives the same events for every single-byte split", async () => {
    const bytes = new TextEncoder().encode(TURN);
    for (let cut = 1; cut < bytes.length; cut += 7) {
      expect(await collect(byteStream([bytes.slice(0, cut), bytes.slice(cut)]))).toEqual(TURN_EVENTS);
    }
  });

  it("stops reading and cancels the body when the consumer leaves early", async () => {
    let cancelled = false;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        controller.enqueue(new TextEncoder().encode('event: token\ndata: {"delta":"x"}\n\n'));
      },
      cancel() {
        cancelled = true;
      },
    });
    let seen = 0;
    for await (const message of readSSE(stream)) {
      expect(message.event).toBe("token");
      if (++seen === 3) break;
    }
    expect(seen).toBe(3);
    expect(cancelled).toBe(true);
  });
});
