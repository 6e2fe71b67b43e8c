// TEMPORARY stub until the nbd branch lands (never committed)
export class NbdPool { static async connect(..._a: unknown[]): Promise<any> { throw new Error('stub'); } }
export async function mapExtents(..._a: unknown[]): Promise<any> { throw new Error('stub'); }
