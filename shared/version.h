/* version.h — the fedge release every binary reports with --version. */
#ifndef FEDGE_VERSION_H
#define FEDGE_VERSION_H

#define FEDGE_VERSION "0.2.0"

#endif
