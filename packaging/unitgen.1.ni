[EXIT STATUS]
.TP
.B 0
success; for \fBdiff\fR and \fBapply \-\-check\fR: nothing would change
.TP
.B 1
a check failed, a unit did not come up (\fBapply\fR rolled back to the previous
generation), or (\fBdiff\fR, \fBapply \-\-check\fR) something would change
.TP
.B 2
bad input: one line names the file, key or unit and what was expected; nothing
was changed
.TP
.B 3
\fBapply\fR or \fBrollback\fR could not restore the previous generation either;
the report names the units left

[FILES]
.TP
.I /etc/unitgen/
specs, recovery policies (\fIpolicy.d/\fR) and secret files
.TP
.I /var/lib/unitgen/history.sqlite3
incident history of the recovery ladder
.TP
.I /var/lib/unitgen/generations/
the unit files of every \fBunitgen apply\fR, and \fIcurrent\fR, the live one
.TP
.I /usr/lib/systemd/catalog/unitgen.catalog
journal message catalog: \fBjournalctl \-x\fR explains unitgen's entries

[SEE ALSO]
.BR unitgen.toml (5),
.BR systemd.service (5),
.BR systemd.exec (5),
.BR systemd-analyze (1),
.BR journalctl (1)
