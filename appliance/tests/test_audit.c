/* Audit log lines: the budget of refusal lines a second, and what it leaves out. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <CUnit/CUnit.h>

#include "audit.h"
#include "cu_run.h"

/* Sleeps until early in a second of the monotonic clock, so that a short burst stays in it. */
static void second_start(void)
{
    struct timespec ts;

    do {
        usleep(20000);
        clock_gettime(CLOCK_MONOTONIC, &ts);
    } while (ts.tv_nsec > 300000000L);
}

static void burst(eg_audit_kind kind, int n)
{
    eg_audit_record rec = {.kind = kind, .profile = "iot", .peer = "192.0.2.7", .reason = "x"};

    for (int i = 0; i < n; i++)
        eg_audit_log(&rec);
}

/*
 * A flood of refusals: 5 lines a second are written, the rest counted and said in one line once
 * a line comes in a later second, or the once-a-second flush runs. Successes are never left
 * out. With no limit, every line.
 */
static void test_refusal_lines_are_rationed(void)
{
    char *text;

    eg_log_set_level(EG_LOG_INFO);
    eg_log_set_refusal_limit(5);
    eg_stderr_capture();
    second_start();
    burst(EG_AUDIT_AUTH_MISSING, 20);
    burst(EG_AUDIT_ISSUED, 20);
    sleep(1);
    burst(EG_AUDIT_ISSUED, 1);
    text = eg_stderr_release();
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    CU_ASSERT_EQUAL(eg_text_count(text, "event=auth.missing"), 5);
    CU_ASSERT_EQUAL(eg_text_count(text, "event=issued"), 21);
    CU_ASSERT_EQUAL(eg_text_count(text,
                                  "estgated audit: 15 lines of refusals and failures left out "
                                  "since "),
                    1);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "(over log_refusals_per_second = 5); their ledger rows "
                                        "are kept\n"));
    /* the note comes before the line that brought it */
    CU_ASSERT(strstr(text, "left out since") < strrchr(text, 'x'));
    free(text);

    /* A flood that stops: its count is said by the flush in a later second, no line needed. */
    eg_log_set_refusal_limit(2);
    eg_stderr_capture();
    second_start();
    burst(EG_AUDIT_LIMIT, 10);
    sleep(1);
    eg_audit_flush();
    eg_audit_flush(); /* once only */
    text = eg_stderr_release();
    CU_ASSERT_EQUAL(eg_text_count(text, "event=limit"), 2);
    CU_ASSERT_EQUAL(
        eg_text_count(text, "estgated audit: 8 lines of refusals and failures left out"), 1);
    CU_ASSERT_EQUAL(eg_text_count(text, "left out"), 1);
    free(text);

    /* At the end (estgated stopping) the count is said in the second it is still in. */
    eg_log_set_refusal_limit(2);
    eg_stderr_capture();
    second_start();
    burst(EG_AUDIT_LIMIT, 5);
    eg_audit_flush_end();
    eg_audit_flush_end(); /* once only */
    text = eg_stderr_release();
    CU_ASSERT_EQUAL(
        eg_text_count(text, "estgated audit: 3 lines of refusals and failures left out"), 1);
    CU_ASSERT_EQUAL(eg_text_count(text, "left out"), 1);
    free(text);

    eg_log_set_refusal_limit(0);
    eg_stderr_capture();
    second_start();
    burst(EG_AUDIT_POLICY, 50);
    text = eg_stderr_release();
    CU_ASSERT_EQUAL(eg_text_count(text, "event=policy"), 50);
    CU_ASSERT_EQUAL(eg_text_count(text, "left out"), 0);
    free(text);
    eg_log_set_refusal_limit(100);
}

/* Whether s is printable ASCII: no byte under 0x20, no DEL, nothing a UTF-8 decoder refuses. */
static bool printable(const char *s)
{
    for (; *s != '\0'; s++) {
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    }
    return true;
}

/*
 * A device's control bytes and invalid UTF-8 reach the ledger's audit row escaped as in the log
 * line: the row's text columns cannot forge a row for `sqlite3` or fail a UTF-8 decoder.
 */
static void test_audit_row_text_is_escaped(void)
{
    eg_audit_record rec = {
        .kind = EG_AUDIT_MALFORMED,
        .profile = "iot",
        .principal = "basic:\n99|issued\xff",
        .peer = "192.0.2.7\x1b[2K",
        .reason = "PEM body is a \"\n99|issued|default|basic:root|\xff\xfe\x1b[2K\\\"",
    };
    eg_audit_event ev;
    eg_audit_row row;
    char big[1000];

    eg_audit_event_fill(&rec, &ev, &row);
    CU_ASSERT(printable(ev.detail) && printable(ev.principal) && printable(ev.peer));
    CU_ASSERT_STRING_EQUAL(ev.detail, "PEM body is a \"\\x0a99|issued|default|basic:root|"
                                      "\\xff\\xfe\\x1b[2K\\\\\"");
    CU_ASSERT_STRING_EQUAL(ev.principal, "basic:\\x0a99|issued\\xff");
    CU_ASSERT_STRING_EQUAL(ev.peer, "192.0.2.7\\x1b[2K");
    CU_ASSERT_STRING_EQUAL(ev.profile, "iot");

    /* Cut to fit, never inside an escape. */
    memset(big, '\x01', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    rec.reason = big;
    rec.dim = EG_DIM_SUBJECT;
    eg_audit_event_fill(&rec, &ev, &row);
    CU_ASSERT(printable(ev.detail));
    CU_ASSERT_EQUAL(strncmp(ev.detail, "dim=subject \\x01", 16), 0);
    CU_ASSERT_EQUAL((strlen(ev.detail) - strlen("dim=subject ")) % 4, 0);
    CU_ASSERT(strlen(ev.detail) < EG_AUDIT_DETAIL_MAX);
}

int main(void)
{
    static CU_TestInfo tests[] = {
        {"refusal lines are rationed", test_refusal_lines_are_rationed},
        {"audit row text is escaped", test_audit_row_text_is_escaped},
        CU_TEST_INFO_NULL,
    };

    return eg_cu_run("audit", NULL, NULL, tests);
}
