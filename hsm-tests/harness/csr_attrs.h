/* CSR attributes that only some clients send, for tests. */
#ifndef EG_CSR_ATTRS_H
#define EG_CSR_ATTRS_H

#include <openssl/x509.h>

/*
 * Windows certreq's validity request: one szOID_ENROLLMENT_NAME_VALUE_PAIR
 * attribute (1.3.6.1.4.1.311.13.2.1) holding ValidityPeriod = unit ("Years",
 * "Days", ...) and ValidityPeriodUnits = count. 0, or -1.
 */
int eg_csr_add_ms_validity(X509_REQ *req, const char *unit, const char *count);

#endif
