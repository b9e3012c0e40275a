/**
 * Resource quantities as Kubernetes writes them, so a policy file, a
 * kernelspec and a pod spec say the same thing the same way: CPU in cores
 * ("4", "0.5", "500m"), memory in bytes with a binary or decimal suffix
 * ("64Gi", "512Mi", "2G", "1073741824"), extended resources as whole counts.
 */

const SUFFIX: Record<string, number> = {
  '': 1,
  m: 1e-3,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

// Bounded so a hostile value cannot be long; exponents ("1e3") are not accepted: no one writes them for a kernel.
const QUANTITY = /^(\d{1,15}(?:\.\d{1,9})?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/;

/** A quantity's value in base units (cores, bytes), or undefined when it is not one. */
export function parseQuantity(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? v : undefined;
  if (typeof v !== 'string') return undefined;
  const m = QUANTITY.exec(v.trim());
  if (!m) return undefined;
  const n = Number(m[1]) * SUFFIX[m[2] ?? '']!;
  return Number.isFinite(n) ? n : undefined;
}

/** CPU cores: "4", "0.5", "500m", or a number. */
export function parseCpu(v: unknown): number | undefined {
  const n = parseQuantity(v);
  // A millicore is the finest grain Kubernetes has.
  return n === undefined ? undefined : Math.round(n * 1000) / 1000;
}

/** Memory in bytes: "64Gi", "512Mi", "2G", or a number of bytes. */
export function parseMemory(v: unknown): number | undefined {
  const n = parseQuantity(v);
  return n === undefined ? undefined : Math.ceil(n);
}

/** A whole count (GPUs, MIG slices): 1, "2". */
export function parseCount(v: unknown): number | undefined {
  const n = typeof v === 'string' && /^\d{1,9}$/.test(v.trim()) ? Number(v) : typeof v === 'number' ? v : NaN;
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/** Memory for a message: the largest binary unit that keeps it readable. */
export function formatMemory(bytes: number): string {
  for (const [s, f] of [
    ['Ti', 2 ** 40],
    ['Gi', 2 ** 30],
    ['Mi', 2 ** 20],
    ['Ki', 2 ** 10],
  ] as const) {
    if (bytes >= f) return `${Number((bytes / f).toFixed(2))}${s}`;
  }
  return String(bytes);
}
