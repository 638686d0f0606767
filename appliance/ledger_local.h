/* What the ledger's tests reach inside it; not part of its API. */
#ifndef EG_LEDGER_LOCAL_H
#define EG_LEDGER_LOCAL_H

#include "ledger.h"

/* Reads PRAGMA name on the writer's own connection, in the writer thread (per-connection
 * settings such as synchronous cannot be seen from another connection). *value: free(). */
int eg_ledger_writer_pragma(eg_ledger *lg, const char *name, char **value);

/* Makes a new database at path with the schema of an older version (0 to the current), for
 * testing what opening it migrates. 0 or -1. */
int eg_ledger_create_at_version(const char *path, int version);

#endif
