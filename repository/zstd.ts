/**
 * zstd on the calling thread into the caller's buffer, through one native context per
 * level that is kept and reused (the chunk pipelines' hot path: every sealed and opened
 * chunk).
 *
 * `zlib.zstdCompressSync` / `zstdDecompressSync` build a whole zlib stream object and a
 * native context per call and return a new chunk-sized buffer; per 512 KiB chunk that is
 * garbage the thread must collect (the pipelines' largest overhead after the codecs
 * themselves, profiled on the 2 GiB bench) plus the context's set-up. Node has no public
 * "into" form, so this drives the stream's native handle directly (`_handle.writeSync`, the
 * call Node's own sync functions make), one frame per call with ZSTD_e_end. The frames are
 * byte-identical to `zstdCompressSync`'s (tested); when the handle is not what this module
 * expects (another Node), it falls back to the public functions.
 *
 * Not re-entrant per thread: each call finishes its frame before returning.
 */
import * as zlib from 'node:zlib';

const { constants } = zlib;

/** The part of a zlib stream's native handle used here. */
interface NativeHandle {
  writeSync(flush: number, input: Uint8Array, inOff: number, inLen: number, out: Uint8Array, outOff: number, outLen: number): void;
  reset(): void;
}

interface Context {
  stream: zlib.ZstdCompress | zlib.ZstdDecompress;
  handle: NativeHandle;
  /** [output bytes left, input bytes left] after the last writeSync. */
  state: Uint32Array;
}

function contextOf(stream: zlib.ZstdCompress | zlib.ZstdDecompress): Context | undefined {
  const internals = stream as unknown as { _handle?: Partial<NativeHandle>; _writeState?: unknown };
  const handle = internals._handle;
  const state = internals._writeState;
  if (typeof handle?.writeSync !== 'function' || typeof handle.reset !== 'function' || !(state instanceof Uint32Array) || state.length !== 2) {
    stream.destroy();
    return undefined;
  }
  // zlib reports a failed writeSync by destroying the stream with the error (at once; the
  // 'error' event follows on the next tick, and is read here instead).
  stream.on('error', () => {});
  return { stream, handle: handle as NativeHandle, state };
}

const compressors = new Map<number | undefined, Context | null>();
let decompressor: Context | null | undefined;

const compressorFor = (level: number | undefined): Context | null => {
  let c = compressors.get(level);
  if (c === undefined) {
    c = contextOf(zlib.createZstdCompress(level === undefined ? {} : { params: { [constants.ZSTD_c_compressionLevel]: level } })) ?? null;
    compressors.set(level, c);
  }
  return c;
};

/** Runs one whole frame through `c`; the bytes written, or undefined when `out` was too small. */
function runFrame(c: Context, input: Uint8Array, out: Uint8Array): number | undefined {
  c.handle.writeSync(constants.ZSTD_e_end, input, 0, input.length, out, 0, out.length);
  // A destroyed stream's handle is closed: the context must never be used again.
  if (c.stream.destroyed) throw c.stream.errored ?? new Error('zstd stream closed');
  const [outLeft, inLeft] = c.state;
  // With output room left over, zstd stopped because the frame was done.
  if (outLeft === 0 || inLeft !== 0) return undefined;
  return out.length - outLeft!;
}

/** At least the largest frame zstd makes of `n` bytes (ZSTD_COMPRESSBOUND: n + n/256 + a small margin, rounded up). */
export function zstdBound(n: number): number {
  return n + (n >> 8) + 1024;
}

/**
 * Compresses `input` as one zstd frame into `out`; the frame's length, or undefined when it
 * does not fit in `out` (give `out` the input's length to learn whether compression pays).
 */
export function zstdCompressInto(input: Uint8Array, out: Uint8Array, level?: number): number | undefined {
  const c = compressorFor(level);
  if (!c) {
    const frame = zlib.zstdCompressSync(input, level === undefined ? {} : { params: { [constants.ZSTD_c_compressionLevel]: level } });
    if (frame.length >= out.length) return undefined;
    out.set(frame);
    return frame.length;
  }
  try {
    const n = runFrame(c, input, out);
    // A frame cut short leaves the context mid-frame (and reset() would drop its level): a new one next time.
    if (n === undefined) dropCompressor(level, c);
    return n;
  } catch (err) {
    dropCompressor(level, c);
    throw err;
  }
}

function dropCompressor(level: number | undefined, c: Context): void {
  compressors.delete(level);
  c.stream.destroy();
}

/**
 * The plaintext size a zstd frame's header declares (Frame_Content_Size, RFC 8878 3.1.1.1),
 * or undefined when the header declares none or `frame` is not a zstd frame. Frames made
 * in one call with ZSTD_e_end (every frame here) declare it.
 */
export function zstdContentSize(frame: Uint8Array): number | undefined {
  if (frame.length < 6 || frame[0] !== 0x28 || frame[1] !== 0xb5 || frame[2] !== 0x2f || frame[3] !== 0xfd) return undefined;
  const descriptor = frame[4]!;
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor >> 5) & 1;
  const fcsBytes = fcsFlag === 0 ? singleSegment : 1 << fcsFlag;
  if (fcsBytes === 0) return undefined;
  const at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][descriptor & 3]!;
  if (frame.length < at + fcsBytes) return undefined;
  const view = new DataView(frame.buffer, frame.byteOffset + at, fcsBytes);
  if (fcsBytes === 1) return view.getUint8(0);
  if (fcsBytes === 2) return view.getUint16(0, true) + 256;
  if (fcsBytes === 4) return view.getUint32(0, true);
  const size = view.getBigUint64(0, true);
  return size <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(size) : undefined;
}

/**
 * Decompresses the zstd frame `input` into all of `out`, whose length is the size the
 * frame's header declares (zstdContentSize): true when the whole frame went in and filled
 * `out` exactly. zstd checks a declared size as it decodes, so a frame that holds more or
 * less fails here; nothing is ever written outside `out`. What `out` holds after a false
 * (or a throw) is undefined. Throws when `input` is not zstd.
 */
export function zstdDecompressExact(input: Uint8Array, out: Uint8Array): boolean {
  if (decompressor === undefined) decompressor = contextOf(zlib.createZstdDecompress()) ?? null;
  const c = decompressor;
  if (!c) {
    const plain = zlib.zstdDecompressSync(input, { chunkSize: Math.max(16 * 1024, out.length + 1) });
    if (plain.length !== out.length) return false;
    out.set(plain);
    return true;
  }
  try {
    c.handle.writeSync(constants.ZSTD_e_end, input, 0, input.length, out, 0, out.length);
    if (c.stream.destroyed) throw c.stream.errored ?? new Error('zstd stream closed');
    const [outLeft, inLeft] = c.state;
    // A full `out` may leave the context short of the frame's end: it starts the next one afresh.
    c.handle.reset();
    return outLeft === 0 && inLeft === 0;
  } catch (err) {
    decompressor = undefined; // the failed stream is destroyed: a new one next time
    throw err;
  }
}

/**
 * Decompresses the zstd frame `input` into `out`; the bytes written, or undefined when the
 * output does not fit in `out`. Throws when `input` is not zstd. The caller checks what it
 * got (a frame cut short yields fewer bytes): chunks are checked against their keyed id.
 */
export function zstdDecompressInto(input: Uint8Array, out: Uint8Array): number | undefined {
  if (decompressor === undefined) decompressor = contextOf(zlib.createZstdDecompress()) ?? null;
  const c = decompressor;
  if (!c) {
    const plain = zlib.zstdDecompressSync(input, { chunkSize: Math.max(16 * 1024, out.length + 1) });
    if (plain.length > out.length) return undefined;
    out.set(plain);
    return plain.length;
  }
  try {
    const n = runFrame(c, input, out);
    if (n === undefined) c.handle.reset();
    return n;
  } catch (err) {
    decompressor = undefined; // the failed stream is destroyed: a new one next time
    throw err;
  }
}

/**
 * A frame decompressed into the caller's buffers (openSync's options): straight into
 * `exactInto` when the frame declares exactly `expectedLength` bytes, else into `into`;
 * undefined when neither is given.
 */
export function zstdDecompressToCallers(frame: Uint8Array, o: { into?: Uint8Array; exactInto?: Uint8Array; expectedLength?: number }): Buffer | undefined {
  if (o.exactInto && o.exactInto.length === o.expectedLength && zstdContentSize(frame) === o.expectedLength && zstdDecompressExact(frame, o.exactInto))
    return Buffer.from(o.exactInto.buffer, o.exactInto.byteOffset, o.exactInto.byteLength);
  if (!o.into) return undefined;
  const n = zstdDecompressInto(frame, o.into);
  return Buffer.from(o.into.buffer, o.into.byteOffset, n ?? o.into.byteLength);
}
