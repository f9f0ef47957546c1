/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * test_phases - ordered phases through the real miltermux: what a later
 * phase is shown, the bounded memory of the replay store and its
 * temporary file, and progress while later phases work.
 *
 * (The DKIM case, with OpenDKIM in phase 2 behind a real Postfix, is in
 * test_postfix.c.)
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixture.h"
#include "harness.h"

/* status_kb - a "VmRSS:"-style line of /proc/PID/status, in KiB */
static long
status_kb(pid_t pid, const char *key)
{
	char	 path[64], *st, *p;
	long	 kb = -1;

	snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
	st = h_read_file(path);
	cr_assert_not_null(st);
	if ((p = strstr(st, key)) != NULL)
		kb = strtol(p + strlen(key), NULL, 10);
	free(st);
	return kb;
}

/* write_big - an .eml with a body of about size bytes */
static char *
write_big(size_t size)
{
	char	*path = h_path("big.eml");
	FILE	*f = fopen(path, "w");
	char	 line[100];

	cr_assert_not_null(f);
	fputs("From: Alice <alice@example.org>\nTo: Bob <bob@example.net>\n"
	    "Subject: big\n\n", f);
	memset(line, 'x', sizeof line - 1);
	line[sizeof line - 2] = '\n';
	line[sizeof line - 1] = '\0';
	for (size_t n = 0; n < size; n += sizeof line - 1)
		fputs(line, f);
	cr_assert_eq(fclose(f), 0);
	return path;
}

static char *
send_file(struct env *e, const char *eml, int *code)
{
	const char	*argv[] = { BIN("miltermux-send"), "-s", e->mux_spec,
			    "-f", "<alice@example.org>", "-r",
			    "<bob@example.net>", "--json", eml, NULL };
	char		*out = NULL;
	int		 status;

	cr_assert_eq(h_run(argv, 120, &out, &status), 0);
	cr_assert(WIFEXITED(status));
	*code = WEXITSTATUS(status);
	return out;
}

static size_t
count_files(const char *dir)
{
	DIR		*d = opendir(dir);
	struct dirent	*de;
	size_t		 n = 0;

	cr_assert_not_null(d);
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

Test(phases, later_phase_sees_the_changed_message, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "first", { "--chgheader", "1:Subject:changed", "--insheader",
		    "0:X-Top:one", "--replbody", "new body\\n", NULL }, NULL },
		{ "second", { "--tag", NULL }, "\"phase\": 2" },
	};
	char		*eml = h_path("m.eml"), *out, *log;
	int		 code;

	cr_assert_eq(h_write_file(eml, "Subject: orig\nFrom: a@example.org\n"
	    "X-Drop: x\n\nold body\n"), 0);
	env_setup(&e, ups, 2, NULL, 0);
	out = send_file(&e, eml, &code);
	cr_assert_eq(code, 0, "%s", out);
	log = h_read_file(e.up_log[1]);
	/* Phase 2 saw phase 1's result, in order, and the new body... */
	HAS(log, " header X-Top: one\n");
	HAS(strstr(log, " header X-Top: one\n"), " header Subject: changed\n");
	HASNT(log, "Subject: orig");
	HAS(log, " body 10\n");
	/* ...only after phase 1 was done with end of message. */
	HAS(h_read_file(e.up_log[0]), " eom");
	/* One script: phase 1's edits, then phase 2's. */
	HAS(out, "\"kind\": \"insheader\", \"index\": 0, \"name\": \"X-Top\"");
	HAS(out, "\"kind\": \"chgheader\", \"index\": 1, \"name\": "
	    "\"Subject\", \"value\": \"changed\"");
	HAS(out, "\"name\": \"X-Testmilter-second\"");
}

Test(phases, reject_in_phase_one_aborts_phase_two, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "first", { "--verdict", "eom=reject", NULL }, NULL },
		{ "second", { "--tag", NULL }, "\"phase\": 2" },
	};
	char		*eml = h_path("m.eml"), *out, *log;
	int		 code;

	cr_assert_eq(h_write_file(eml, "Subject: s\n\nbody\n"), 0);
	env_setup(&e, ups, 2, NULL, 0);
	out = send_file(&e, eml, &code);
	cr_assert_eq(code, 1, "%s", out);
	cr_assert_eq(h_wait_file_contains(e.up_log[1], " abort", 10), 0);
	log = h_read_file(e.up_log[1]);
	HASNT(log, " header ");
	HASNT(log, " eom");
}

/*
 * A 20 MB message through two phases with 1 MiB of replay memory: the
 * body goes to an unlinked 0600 file in replay.directory, the process's
 * peak memory stays within that limit plus a small constant, and no
 * file is left behind.
 */
Test(phases, big_message_is_replayed_from_a_bounded_store, .timeout = 120)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "first", { NULL }, NULL },
		{ "second", { "--delay", "eom=1500", "--tag", NULL },
		    "\"phase\": 2" },
	};
	char		*dir = h_path("replay"), *top, *eml, *outf, *fdp, *sent;
	char		 link[PATH_MAX], path[PATH_MAX];
	const char	*argv[12];
	struct stat	 st;
	long		 base, peak;
	pid_t		 send;
	int		 status, seen = 0;
	double		 t0;

	cr_assert_eq(mkdir(dir, 0700), 0);
	top = h_xasprintf("\"replay\": { \"memory\": 1048576, \"directory\": "
	    "\"%s\" }", dir);
	env_setup(&e, ups, 2, top, 0);
	eml = write_big(20 * 1024 * 1024);
	outf = h_path("send.out");
	argv[0] = BIN("miltermux-send");
	argv[1] = "-s";
	argv[2] = e.mux_spec;
	argv[3] = "-r";
	argv[4] = "<bob@example.net>";
	argv[5] = "--json";
	argv[6] = eml;
	argv[7] = NULL;
	/* A small message first, so that the baseline includes the
	 * first-use costs of libmilter, the pool and the upstreams. */
	{
		char	*small = h_path("small.eml");
		int	 code;

		h_write_file(small, "Subject: s\n\nbody\n");
		free(send_file(&e, small, &code));
		cr_assert_eq(code, 0);
	}
	base = status_kb(e.mux, "VmRSS:");
	send = h_spawn(argv, outf);
	cr_assert(send > 0);
	/* While phase 2 holds end of message, the store is an open,
	 * already unlinked file of mode 0600 in the replay directory. */
	for (t0 = h_now(); h_now() - t0 < 60 && !seen;) {
		char	 fddir[64];
		DIR	*d;
		struct dirent *de;

		snprintf(fddir, sizeof fddir, "/proc/%ld/fd", (long)e.mux);
		cr_assert_not_null(d = opendir(fddir));
		while ((de = readdir(d)) != NULL && !seen) {
			ssize_t	 n;

			fdp = h_xasprintf("%s/%s", fddir, de->d_name);
			n = readlink(fdp, link, sizeof link - 1);
			if (n > 0) {
				link[n] = '\0';
				snprintf(path, sizeof path, "%s/miltermux-"
				    "replay.", dir);
				/* Between mkstemp and unlink the name is
				 * still there: look again a moment later. */
				if (strncmp(link, path, strlen(path)) == 0 &&
				    strstr(link, "(deleted)") != NULL) {
					cr_assert_eq(stat(fdp, &st), 0);
					cr_assert_eq(st.st_mode & 0777, 0600);
					cr_assert_gt(st.st_size, 0);
					seen = 1;
				}
			}
			free(fdp);
		}
		closedir(d);
		if (h_wait_exit(send, 0.02, &status) == 0)
			break;
	}
	cr_assert(seen, "the replay file was never seen");
	cr_assert_eq(h_wait_exit(send, 90, &status), 0);
	sent = h_read_file(outf);
	cr_assert_not_null(sent, "no output from miltermux-send");
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s", sent);
	HAS(sent, "X-Testmilter-second");
	peak = status_kb(e.mux, "VmHWM:");
	fprintf(stderr, "replay: RSS before %ld KiB, peak %ld KiB, growth "
	    "%ld KiB for a 20 MiB body with 1 MiB of replay memory\n", base,
	    peak, peak - base);
	/* 1 MiB of store, and what is in flight to the upstreams (64
	 * packets of 64 KiB at most for each) and in libmilter's buffer.
	 * A sanitizer's quarantine makes memory meaningless there. */
#ifndef MILTERMUX_SANITIZED
	cr_assert_lt(peak - base, 1024 + 12 * 1024, "peak grew by %ld KiB",
	    peak - base);
#endif
	cr_assert_eq(count_files(dir), 0, "a replay file was left behind");
}

/* While later phases work, the MTA is kept informed. */
Test(phases, progress_while_phase_two_works, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "first", { "--delay", "eom=3000", NULL }, NULL },
		{ "second", { "--delay", "eom=3000", "--tag", NULL },
		    "\"phase\": 2" },
	};
	char		*eml = h_path("m.eml"), *out, *p;
	int		 code;

	cr_assert_eq(h_write_file(eml, "Subject: s\n\nbody\n"), 0);
	env_setup(&e, ups, 2, NULL, 0);
	out = send_file(&e, eml, &code);
	cr_assert_eq(code, 0, "%s", out);
	/* 6 s of work over two phases: progress packets keep coming, on
	 * one clock for both. */
	p = strstr(out, "\"stage\": \"eom\"");
	cr_assert_not_null(p, "%s", out);
	p = strstr(p, "\"progress\": ");
	cr_assert_not_null(p, "%s", out);
	cr_assert_geq(strtol(p + 12, NULL, 10), 2, "%s", out);
	HAS(out, "X-Testmilter-second");
}

/*
 * Each phase has its own content budget, from the moment it starts: a
 * phase-1 upstream that times out at end of message costs the signer
 * in phase 2 none of its time.  Phase 2 still gets the message, signs
 * it, and is neither blamed nor marked down; the next session finds it
 * up.  (Before, all phases shared one budget from the MTA's end of
 * message, so phase 2 was cut off after the 1.5 s phase 1 had taken
 * and the mail left unsigned.)
 */
Test(phases, each_phase_has_its_own_budget, .timeout = 60)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "first", { "--delay", "eom=4000", NULL },
		    "\"on_failure\": \"accept\", "
		    "\"timeouts\": { \"content\": 1.5 }" },
		{ "second", { "--delay", "eom=1000", "--tag", NULL },
		    "\"phase\": 2, \"on_failure\": \"accept\", "
		    "\"timeouts\": { \"content\": 2 }" },
	};
	char		*eml = h_path("m.eml"), *out, *log;
	int		 code;

	cr_assert_eq(h_write_file(eml, "Subject: s\n\nbody\n"), 0);
	env_setup(&e, ups, 2, "\"failures\": 1", 0);
	out = send_file(&e, eml, &code);
	cr_assert_eq(code, 0, "%s", out);
	HAS(out, "X-Testmilter-second");
	log = env_wait_log(&e, "conn-1): upstreams");
	HAS(log, "upstream first: eom: no answer in time");
	HASNT(log, "upstream second:");
	HAS(log, "second=continue");
	/* The next session: second is up (first, failed once with
	 * "failures": 1, is down and skipped). */
	out = send_file(&e, eml, &code);
	cr_assert_eq(code, 0, "%s", out);
	HAS(out, "X-Testmilter-second");
	log = env_wait_log(&e, "conn-2): upstreams");
	HASNT(log, "upstream second:");
	env_stop(&e, 0.5);
}

/*
 * The replay of a large message to a later phase is bounded by the
 * content timeout, not by the command timeout: here the replay of
 * 12 MiB takes about 4 s (192 body chunks, one every 20 ms, at most 64
 * in flight) against a command timeout of 1 s and a content timeout of
 * 30 s.  (Before, it was cut off after
 * the command timeout and the message tempfailed.)
 */
Test(phases, replay_is_bounded_by_the_content_timeout, .timeout = 90)
{
	struct env	 e;
	struct up	 ups[] = {
		{ "first", { NULL }, NULL },
		{ "second", { "--delay", "body=20", "--tag", NULL },
		    "\"phase\": 2, "
		    "\"timeouts\": { \"command\": 1, \"content\": 30 }" },
	};
	char		*eml = write_big(12u * 1024 * 1024), *out, *log;
	int		 code;

	env_setup(&e, ups, 2, NULL, 0);
	out = send_file(&e, eml, &code);
	cr_assert_eq(code, 0, "%s", out);
	HAS(out, "X-Testmilter-second");
	log = env_wait_log(&e, "conn-1): upstreams");
	HASNT(log, "upstream second:");
	env_stop(&e, 0.5);
}
