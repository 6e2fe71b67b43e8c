/** Aligned text tables for people; `--json` prints the rows themselves for scripts. */

/** Columns padded to their widest cell, two spaces apart, trailing blanks trimmed. */
export function formatTable(head: string[], rows: string[][]): string[] {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  return [head, ...rows].map((r) =>
    r
      .map((c, i) => (c ?? '').padEnd(widths[i]!))
      .join('  ')
      .trimEnd(),
  );
}

/** An ISO time as `2026-12-06 23:04:24Z` (seconds, UTC). */
export const shortTime = (iso: string | null | undefined) => (iso ? iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '-');
