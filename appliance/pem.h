/* PEM certificate files, as the appliance and the provisioning tool read them. */
#ifndef EG_PEM_H
#define EG_PEM_H

#include <openssl/x509.h>

/*
 * Every certificate in a PEM file, in order; NULL when the file cannot be
 * read or holds none. Other PEM blocks around them are skipped.
 */
STACK_OF(X509) * eg_pem_read_certs(const char *path);

#endif
