/**
 * Frames with many top-level members, for the member-bound tests of the JSON
 * scanner and codec: `head`, then `n` members `"xxxxx":0,` with distinct
 * base-36 names, then `tail`. Built in place, 10 bytes a member, so millions
 * of members cost a single allocation.
 */
export function manyMembers(n: number, head = '{', tail = '"z":0}'): Buffer {
  const h = Buffer.from(head);
  const t = Buffer.from(tail);
  const f = Buffer.allocUnsafe(h.length + 10 * n + t.length);
  h.copy(f, 0);
  let at = h.length;
  for (let k = 0; k < n; k++) {
    f[at] = 0x22; // "
    for (let d = 5, v = k; d >= 1; d--, v = Math.floor(v / 36)) f[at + d] = (v % 36 < 10 ? 0x30 : 0x61 - 10) + (v % 36);
    f[at + 6] = 0x22; // "
    f[at + 7] = 0x3a; // :
    f[at + 8] = 0x30; // 0
    f[at + 9] = 0x2c; // ,
    at += 10;
  }
  t.copy(f, at);
  return f;
}
