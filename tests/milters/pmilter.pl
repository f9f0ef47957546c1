#!/usr/bin/perl
# SPDX-License-Identifier: BSD-2-Clause
#
# pmilter.pl - a milter written with Sendmail::PMilter, not libmilter.
#
# The suite's filter that speaks the milter protocol through another
# implementation: Sendmail::PMilter (Debian libsendmail-pmilter-perl)
# answers the option negotiation with protocol version 2 and asks only
# for the protocol steps it has callbacks for, so the MTA side talking
# to it must send no UNKNOWN and no DATA command (version 2 knows
# neither; PMilter would not answer an UNKNOWN at all).  It does real
# work at several stages, each chosen on the command line:
#
# Usage: pmilter.pl -p SPEC [options]
#
#   -p SPEC                 unix:/abs/path or inet:PORT@HOST (PMilter's
#                           setconn; a stale unix socket is removed)
#   -n NAME                 name in the added header (default "pmilter")
#   --log FILE              append one line per callback, with a single
#                           write under O_APPEND: "<pid> <stage>[ <details>]"
#                           (PMilter forks a process per connection, so
#                           the pid tells the sessions apart)
#   --reject-rcpt ADDR      at envrcpt, reject this recipient (compared
#                           case-insensitively without <>) with --rcpt-reply
#   --rcpt-reply "CODE XCODE TEXT"
#                           default "550 5.7.1 Recipient refused by pmilter"
#   --tempfail-from ADDR    at envfrom, tempfail this sender with --from-reply
#   --from-reply "CODE XCODE TEXT"
#                           default "451 4.7.1 Sender deferred by pmilter"
#   --subject-prefix TEXT   at eom, change the first Subject header to TEXT
#                           followed by its original value (chgheader)
#   --addrcpt ADDR          at eom, add this recipient (addrcpt)
#   At eom it always adds "X-PMilter-NAME: rcpts=N body=B" (addheader),
#   N the recipients it accepted, B the body bytes it was sent.
#
# Log details: connect the host name; helo the name; envfrom and envrcpt
# the arguments joined by spaces, then " -> reject" or " -> tempfail"
# when it refused; header "NAME: VALUE"; body the chunk's byte count;
# data (PMilter calls it if the MTA sends DATA); eoh, eom, abort, close
# nothing.  Bytes outside 0x20-0x7e are written as \xNN.
#
# Exit: 64 on a bad command line, 73 when the log cannot be opened, 70
# when the socket cannot be set up; otherwise it runs until a signal.
use strict;
use warnings;

use Fcntl qw(O_WRONLY O_CREAT O_APPEND);
use Getopt::Long qw(GetOptions);
use Sendmail::PMilter qw(:all);

my %opt = (
	name		=> 'pmilter',
	'rcpt-reply'	=> '550 5.7.1 Recipient refused by pmilter',
	'from-reply'	=> '451 4.7.1 Sender deferred by pmilter',
);
GetOptions(\%opt, 'p=s', 'name|n=s', 'log=s', 'reject-rcpt=s',
    'rcpt-reply=s', 'tempfail-from=s', 'from-reply=s', 'subject-prefix=s',
    'addrcpt=s') && defined $opt{p} && !@ARGV
	or do { print STDERR "usage: pmilter.pl -p SPEC [options]\n"; exit 64 };

my $log_fh;
if (defined $opt{log}) {
	sysopen($log_fh, $opt{log}, O_WRONLY | O_CREAT | O_APPEND, 0644)
		or do { print STDERR "pmilter.pl: $opt{log}: $!\n"; exit 73 };
}

# logline - one line, one write(2), so forked sessions do not interleave
sub logline {
	my ($stage, $details) = @_;
	return unless defined $log_fh;
	my $line = "$$ $stage";
	if (defined $details) {
		(my $d = $details) =~ s/([^\x20-\x7e])/sprintf('\\x%02X', ord $1)/ge;
		$line .= " $d";
	}
	syswrite($log_fh, "$line\n");
}

# bare - an address without <> and in lower case, for comparison
sub bare {
	my $a = lc(shift // '');
	$a =~ s/^<(.*)>$/$1/;
	return $a;
}

# reply - set the SMTP reply from "CODE XCODE TEXT"
sub reply {
	my ($ctx, $spec) = @_;
	my ($code, $xcode, $text) = split(/ /, $spec, 3);
	$ctx->setreply($code, $xcode, $text // '');
}

my %cb = (
	connect => sub {
		my ($ctx, $host) = @_;
		$ctx->setpriv({ rcpts => 0, body => 0 });
		logline('connect', $host);
		return SMFIS_CONTINUE;
	},
	helo => sub {
		my ($ctx, $helo) = @_;
		logline('helo', $helo);
		return SMFIS_CONTINUE;
	},
	envfrom => sub {
		my ($ctx, @args) = @_;
		my $p = $ctx->getpriv;
		$p->{rcpts} = 0;
		$p->{body} = 0;
		$p->{subject_seen} = 0;
		if (defined $opt{'tempfail-from'} &&
		    bare($args[0]) eq bare($opt{'tempfail-from'})) {
			logline('envfrom', "@args -> tempfail");
			reply($ctx, $opt{'from-reply'});
			return SMFIS_TEMPFAIL;
		}
		logline('envfrom', "@args");
		return SMFIS_CONTINUE;
	},
	envrcpt => sub {
		my ($ctx, @args) = @_;
		if (defined $opt{'reject-rcpt'} &&
		    bare($args[0]) eq bare($opt{'reject-rcpt'})) {
			logline('envrcpt', "@args -> reject");
			reply($ctx, $opt{'rcpt-reply'});
			return SMFIS_REJECT;
		}
		$ctx->getpriv->{rcpts}++;
		logline('envrcpt', "@args");
		return SMFIS_CONTINUE;
	},
	data => sub {
		logline('data');
		return SMFIS_CONTINUE;
	},
	header => sub {
		my ($ctx, $name, $value) = @_;
		my $p = $ctx->getpriv;
		if (lc $name eq 'subject' && !defined $p->{subject}) {
			$p->{subject} = $value;
		}
		logline('header', "$name: $value");
		return SMFIS_CONTINUE;
	},
	eoh => sub {
		logline('eoh');
		return SMFIS_CONTINUE;
	},
	body => sub {
		my ($ctx, $chunk, $len) = @_;
		$ctx->getpriv->{body} += $len;
		logline('body', $len);
		return SMFIS_CONTINUE;
	},
	eom => sub {
		my $ctx = shift;
		my $p = $ctx->getpriv;
		logline('eom');
		$ctx->addheader("X-PMilter-$opt{name}",
		    "rcpts=$p->{rcpts} body=$p->{body}");
		if (defined $opt{'subject-prefix'}) {
			$ctx->chgheader('Subject', 1,
			    "$opt{'subject-prefix'}" . ($p->{subject} // ''));
		}
		$ctx->addrcpt($opt{addrcpt}) if defined $opt{addrcpt};
		delete $p->{subject};
		return SMFIS_CONTINUE;
	},
	abort => sub {
		my $ctx = shift;
		my $p = $ctx->getpriv;
		delete $p->{subject} if defined $p;
		logline('abort');
		return SMFIS_CONTINUE;
	},
	close => sub {
		logline('close');
		return SMFIS_CONTINUE;
	},
);

my $milter = Sendmail::PMilter->new;
$milter->setconn($opt{p})
	or do { print STDERR "pmilter.pl: cannot listen on $opt{p}\n"; exit 70 };
$milter->register($opt{name}, \%cb,
    SMFIF_ADDHDRS | SMFIF_CHGHDRS | SMFIF_ADDRCPT);
$milter->main;
exit 70;
