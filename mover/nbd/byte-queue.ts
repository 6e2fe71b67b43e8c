/**
 * The bytes received from a socket and not consumed yet. Parsers take exactly the bytes
 * of one message; read data is copied from the received chunks straight into the
 * caller's buffer (no concatenation on the data path).
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0;
  private size = 0;

  /** Bytes buffered. */
  get available(): number {
    return this.size;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.size += chunk.length;
  }

  /** The big-endian u32 at the front, not consumed; needs 4 bytes available. */
  peekU32(): number {
    const first = this.chunks[0]!;
    if (first.length - this.head >= 4) return first.readUInt32BE(this.head);
    const b = Buffer.alloc(4);
    this.copyOut(b, 0, 4, false);
    return b.readUInt32BE(0);
  }

  /** Removes and returns the next `n` bytes (a view when they lie in one chunk). */
  take(n: number): Buffer {
    if (n > this.size) throw new Error(`ByteQueue.take(${n}) with ${this.size} bytes buffered`);
    const first = this.chunks[0];
    if (first && first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n);
      this.consume(n);
      return view;
    }
    const b = Buffer.allocUnsafe(n);
    this.copyOut(b, 0, n, true);
    return b;
  }

  /** Moves the next `n` bytes into `dest` at `at`. */
  copyTo(dest: Buffer, at: number, n: number): void {
    this.copyOut(dest, at, n, true);
  }

  /** Drops the next `n` bytes. */
  skip(n: number): void {
    this.consume(n);
  }

  private copyOut(dest: Buffer, at: number, n: number, consume: boolean): void {
    if (n > this.size) throw new Error(`ByteQueue: ${n} bytes wanted, ${this.size} buffered`);
    let head = this.head;
    let done = 0;
    for (let i = 0; done < n; i++) {
      const c = this.chunks[i]!;
      const m = Math.min(n - done, c.length - head);
      c.copy(dest, at + done, head, head + m);
      done += m;
      head = 0;
    }
    if (consume) this.consume(n);
  }

  private consume(n: number): void {
    this.size -= n;
    while (n > 0) {
      const c = this.chunks[0]!;
      const left = c.length - this.head;
      if (n < left) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }
}
