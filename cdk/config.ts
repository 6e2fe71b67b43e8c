/** Deployment configuration. Sites, hosts and policies as typed config come later (issue 4). */
export const defaultConfig = Object.freeze({ moverGroups: ['site-a'] as string[] });
