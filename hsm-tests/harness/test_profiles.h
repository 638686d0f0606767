/* The profiles the core tests and the CSR fuzz target check requests against. */
#ifndef EG_TEST_PROFILES_H
#define EG_TEST_PROFILES_H

#include "config.h"

#define EG_TEST_NPROFILES 4

/*
 * Fills p[0..3], which must be zeroed, with:
 *   "iot": SAN rules of every type, CN and O allowed, client auth, 30 days, no rekey;
 *   "default": a subject template, challengePassword required, rekey allowed;
 *   "plain": P-384, challengePassword required, no template or extensions (csrattrs
 *            is a list);
 *   "bare": nothing to say.
 * Each signs with ca_uri and the chain ca_path (NULL where nothing is signed) and
 * takes Basic auth. The strings are not copied.
 */
void eg_test_profiles(eg_profile_cfg p[EG_TEST_NPROFILES], const char *ca_uri, const char *ca_path);

#endif
