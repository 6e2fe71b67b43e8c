/**
 * How a libvirt host's backup jobs export the VMs' disks to the movers (`hosts[].exports`
 * in the configuration, carried in every job's `hypervisor`): on a unix socket of the
 * hypervisor host (the movers run there), or on a TCP port of the hypervisor that movers
 * elsewhere connect to, with TLS unless the operator explicitly accepts clear text.
 * The zod schema is the contract: the configuration, the functions and the mover check
 * it alike.
 */
import { z } from 'zod';

/** The ports a TCP export is tried on when the host names none: 10809 is NBD's IANA port. */
export const DEFAULT_EXPORT_PORTS: readonly [number, number] = [10809, 10872];

const port = z.number().int('must be a whole number').min(1024, 'must be at least 1024').max(65535, 'must be at most 65535');
/** A DNS name, an IPv4 address or a bare IPv6 address: what QEMU binds and what the movers connect to. */
const address = z
  .string()
  .regex(
    /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$/,
    'must be the hypervisor\'s host name or IP address (no scheme, port or brackets), e.g. "kvm-01.example.com" or "10.0.0.5"',
  );

export const libvirtExports = z
  .object({
    /** `unix` (default): a socket in the mover's work folder, the mover on the hypervisor host. `tcp`: a port of the hypervisor, for movers elsewhere. */
    transport: z
      .enum(['unix', 'tcp'], { error: 'must be "unix" (movers on the hypervisor host) or "tcp" (movers reach the hypervisor over the network)' })
      .optional(),
    /** TCP: the hypervisor's address that QEMU listens on and the movers connect to. */
    address: address.optional(),
    /** TCP: the ports tried, first to last, `[from, to]` (default 10809–10872); a port in use is skipped. */
    ports: z.tuple([port, port], { error: 'must be [from, to], two port numbers' }).optional(),
    /** TCP: TLS on the export (default true): libvirt's backup_tls_x509_cert_dir on the host, LIFEBOAT_NBD_TLS_DIR on the movers. */
    tls: z.boolean().optional(),
    /** TCP without TLS: must be set to true to accept VM disks crossing the network in clear text. */
    insecure: z.boolean().optional(),
    /**
     * TCP: a folder on the hypervisor for the scratch files (libvirt creates and deletes
     * them there). Unset: libvirt puts each beside its disk's image (`<image>.<time>`).
     */
    scratchDir: z
      .string()
      .refine((p) => p.startsWith('/') && !p.split('/').includes('..'), 'must be an absolute path on the hypervisor without ".."')
      .optional(),
  })
  .strict()
  .superRefine((e, ctx) => {
    const problem = (key: string, message: string) => ctx.addIssue({ code: 'custom', path: [key], message });
    if ((e.transport ?? 'unix') === 'unix') {
      for (const key of ['address', 'ports', 'tls', 'insecure', 'scratchDir'] as const) {
        if (e[key] !== undefined) problem(key, 'is only used with "transport": "tcp" (a unix socket export is read by movers on the hypervisor host)');
      }
      return;
    }
    if (!e.address)
      problem('address', 'is required with "transport": "tcp": the hypervisor\'s host name or IP address that QEMU listens on and the movers connect to');
    if (e.ports && e.ports[0] > e.ports[1]) problem('ports', `runs backwards: [${e.ports[0]}, ${e.ports[1]}] must be [from, to] with from ≤ to`);
    if (e.tls === false && e.insecure !== true) {
      problem(
        'tls',
        'is false, which sends VM disks over the network in clear text: keep TLS (the default: set backup_tls_x509_cert_dir in the hypervisor\'s qemu.conf and LIFEBOAT_NBD_TLS_DIR on the movers), or, on a network you trust, also set "insecure": true',
      );
    }
    if (e.insecure !== undefined && e.tls !== false) problem('insecure', 'only applies with "tls": false');
  });

export type LibvirtExports = z.infer<typeof libvirtExports>;

/** Exports as the driver uses them, defaults applied. */
export type ResolvedExports =
  | { transport: 'unix' }
  | { transport: 'tcp'; address: string; ports: readonly [number, number]; tls: boolean; scratchDir?: string };

/** Applies the defaults: unix when unset; TCP on 10809–10872 with TLS. */
export function resolveExports(e: LibvirtExports | undefined): ResolvedExports {
  if (!e || (e.transport ?? 'unix') === 'unix') return { transport: 'unix' };
  if (!e.address) throw new Error("a TCP export needs the hypervisor's address (exports.address)");
  return {
    transport: 'tcp',
    address: e.address,
    ports: e.ports ?? DEFAULT_EXPORT_PORTS,
    tls: e.tls ?? true,
    ...(e.scratchDir && { scratchDir: e.scratchDir }),
  };
}
